//! `dbgrant plan` against a corpus of manifest sets (`tests/plan/`), each
//! with its expected output: valid changes, unions growing and shrinking,
//! denied bindings, a tightened policy, schema and CEL violations, expiry,
//! pruning with `deletionPolicy: Retain`, Cosmos DB names. See
//! `tests/plan/README.md`.

use std::path::{Path, PathBuf};

use dbgrant::preview::{self, Baseline, Mode, manifests, render};

const NOW: &str = "2030-06-01T00:00:00Z";

fn read_dir(dir: &Path) -> manifests::Inputs {
    if dir.exists() { manifests::read(&[dir.to_path_buf()]).unwrap() } else { manifests::Inputs::default() }
}

fn run_case(case: &Path) -> (String, preview::Report) {
    let now = NOW.parse().unwrap();
    let root = case.parent().unwrap();
    let mut before = read_dir(&root.join("common")).documents;
    before.extend(read_dir(&case.join("before")).documents);
    let change = read_dir(&case.join("change"));
    let mode = if case.join("prune").exists() { Mode::Prune } else { Mode::Apply };
    let baseline = Baseline::of_manifests(&before, "default", now);
    let report = preview::plan(&change.documents, change.skipped, &baseline, mode, "default", now);
    // Paths relative to the case, so the output does not depend on the checkout.
    let text = render::text(&report, false).replace(&format!("{}/", case.display()), "");
    (format!("{text}exit {}\n", report.exit_code()), report)
}

fn cases() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/plan");
    let mut cases: Vec<PathBuf> =
        std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().path()).filter(|p| p.join("change").is_dir()).collect();
    cases.sort();
    cases
}

#[test]
fn every_case_prints_its_expected_plan() {
    let bless = std::env::var_os("DBGRANT_BLESS").is_some();
    let mut failed = Vec::new();
    let all = cases();
    assert!(all.len() >= 9, "the corpus is missing cases: {all:?}");
    for case in all {
        let (got, _) = run_case(&case);
        let expected_path = case.join("expected.txt");
        if bless {
            std::fs::write(&expected_path, &got).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if got != expected {
            failed.push(format!("== {} ==\n--- expected\n{expected}--- got\n{got}", case.display()));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
fn exit_codes_say_what_was_found() {
    let code =
        |name: &str| run_case(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/plan").join(name)).1.exit_code();
    assert_eq!(code("new-grants"), preview::EXIT_CHANGES);
    assert_eq!(code("no-change"), preview::EXIT_NO_CHANGE);
    assert_eq!(code("expired"), preview::EXIT_CHANGES);
    assert_eq!(code("denied"), preview::EXIT_REFUSED);
    assert_eq!(code("invalid"), preview::EXIT_REFUSED);
}

/// The JSON shape is documented in README (`dbgrant.io/plan/v1`): its
/// fields are pinned here so a change to them is a deliberate one.
#[test]
fn the_json_shape_is_the_documented_one() {
    let (_, report) = run_case(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/plan/union-shrinks"));
    let v = serde_json::to_value(&report).unwrap();
    assert_eq!(v["apiVersion"], "dbgrant.io/plan/v1");
    assert_eq!(v["baseline"], "manifests");
    let keys = |v: &serde_json::Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    let top = keys(&v);
    assert_eq!(top, ["apiVersion", "baseline", "bindings", "invalid", "skippedDocuments", "summary", "targets"]);
    assert_eq!(
        v["summary"],
        serde_json::json!({"create": 1, "update": 1, "delete": 0, "release": 0, "refused": 0, "invalid": 0})
    );
    let binding = &v["bindings"][0];
    assert_eq!(binding["binding"], "MongoRoleBinding/team-audit/orders-audit");
    assert_eq!(binding["reason"], "Allowed");
    assert_eq!(binding["refused"], false);
    let change = &v["targets"][0]["changes"][0];
    assert_eq!(keys(change), ["action", "becauseOf", "details", "name", "object", "owner"]);
    assert_eq!(v["targets"][0]["kind"], "MongoTarget");
    assert_eq!(v["targets"][0]["observe"], false);
    assert_eq!(
        change["details"][0],
        serde_json::json!({"added": false, "what": "privilege find, insert on orders.audit"})
    );
}

/// The binary as a kubectl plugin (`kubectl dbgrant plan` runs
/// `kubectl-dbgrant plan`), reading `kustomize build` output from stdin,
/// with markdown output for a pull-request comment.
#[test]
fn the_binary_works_as_a_kubectl_plugin_reading_stdin() {
    use std::io::Write as _;
    let dir = std::env::temp_dir().join(format!("dbgrant-plugin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let plugin = dir.join("kubectl-dbgrant");
    let _ = std::fs::remove_file(&plugin);
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_dbgrant"), &plugin).unwrap();
    let case = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/plan/new-grants/change/mongo.yaml");
    let common = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/plan/common/targets.yaml");
    let stdin = std::fs::read_to_string(&common).unwrap() + "---\n" + &std::fs::read_to_string(&case).unwrap();
    let mut child = std::process::Command::new(&plugin)
        .args(["plan", "-f", "-", "-o", "markdown"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(i32::from(preview::EXIT_CHANGES)), "{text}");
    assert!(text.starts_with("### dbgrant plan\n\n**2 to create, 0 to update, 0 to delete.**"), "{text}");
    assert!(text.contains("```diff\n+ create role admin.entra/71b72785-7c23-4e2e-9fa7-ad62ce90a22a"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `dbgrant access` on a corpus case: a union is one row listing both
/// bindings; the filters, expiry and the CSV quoting.
#[test]
fn the_access_report_shows_each_subjects_union_and_its_bindings() {
    use dbgrant::preview::{access, end_state::end_state};
    let now = NOW.parse().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/plan");
    let mut docs = read_dir(&root.join("common")).documents;
    docs.extend(read_dir(&root.join("union-shrinks/before")).documents);
    docs.extend(read_dir(&root.join("expired/before")).documents);
    let Baseline::Manifests(objects) = Baseline::of_manifests(&docs, "default", now) else { unreachable!() };
    let state = end_state(&objects, now);
    let g1 = "71b72785-7c23-4e2e-9fa7-ad62ce90a22a";
    let rows = access::rows(&objects, &state, Some("orders-mongo"), Some(&g1.to_uppercase()));
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0].grants, ["read@orders", "find, insert on orders.audit"]);
    assert_eq!(rows[0].bindings, ["team-audit/orders-audit", "team-orders/orders-readers"]);
    assert_eq!(rows[0].expires, None, "no binding ends");
    let all = access::rows(&objects, &state, None, None);
    let oncall = all.iter().find(|r| r.bindings == ["team-orders/oncall"]).expect("the oncall binding's row");
    assert_eq!(oncall.expires.as_deref(), Some("2030-07-30T00:00:00Z"), "created 2030-05-01 + 2160h");
    assert!(all.iter().all(|r| r.bindings != ["team-orders/contractor"]), "an expired binding grants nothing");
    let csv = access::csv(&rows);
    assert_eq!(csv.lines().count(), 2);
    assert!(csv.contains(",\"read@orders; find, insert on orders.audit\","), "{csv}");
    let table = access::table(&all);
    assert!(table.starts_with("TARGET KIND"), "{table}");
}
