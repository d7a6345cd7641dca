//! The committed CRDs under `crds/` (and their copies in the Helm chart and
//! kustomize base) must equal what the Rust types generate. Regenerate
//! with `cargo run -- crdgen --out crds --out charts/dbgrant/crds --out deploy/base/crds`.

use std::path::Path;

use dbgrant::api::crdgen;

#[test]
fn committed_crds_match_the_types() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut stale = Vec::new();
    for dir in ["crds", "charts/dbgrant/crds", "deploy/base/crds"] {
        if !root.join(dir).exists() {
            continue;
        }
        for (file, crd) in crdgen::all() {
            let path = root.join(dir).join(file);
            let want = crdgen::render(&crd).expect("CRD renders as YAML");
            let have = std::fs::read_to_string(&path).unwrap_or_default();
            if have != want {
                stale.push(path.display().to_string());
            }
        }
    }
    assert!(
        stale.is_empty(),
        "CRD YAML is out of date: {stale:?}\nrun: cargo run -- crdgen --out crds --out charts/dbgrant/crds --out deploy/base/crds"
    );
}

#[test]
fn every_kind_has_status_columns_category_and_cel() {
    for (file, crd) in crdgen::all() {
        assert_eq!(crd.spec.group, "dbgrant.io", "{file}");
        assert_eq!(crd.spec.names.categories.as_deref(), Some(&["dbgrant".to_string()][..]), "{file}");
        assert!(crd.spec.names.short_names.as_ref().is_some_and(|s| !s.is_empty()), "{file}");
        let v = &crd.spec.versions[0];
        assert_eq!(v.name, "v1alpha1");
        assert!(v.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some(), "{file}: status subresource");
        let cols: Vec<_> = v.additional_printer_columns.iter().flatten().map(|c| c.name.as_str()).collect();
        for want in ["Ready", "Reason", "Age"] {
            assert!(cols.contains(&want), "{file}: column {want} missing from {cols:?}");
        }
        let yaml = crdgen::render(&crd).unwrap();
        assert!(yaml.contains("x-kubernetes-validations"), "{file}: no CEL rule");
    }
}
