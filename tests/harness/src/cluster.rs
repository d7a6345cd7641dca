//! A cluster for tests: the shared control plane with dbgrant's CRDs and the
//! chart's RBAC installed, clients for the admin and the operator identity,
//! and helpers to apply manifests and wait for conditions.

use std::{
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use kube::{
    Api, Client, Config,
    api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
    core::GroupVersionKind,
    discovery::{ApiResource, Scope, pinned_kind},
};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use crate::{chart, controlplane::ControlPlane, manifests, paths};

/// The field manager the harness applies with.
pub const FIELD_MANAGER: &str = "dbgrant-e2e";

/// The five dbgrant kinds.
pub const KINDS: [&str; 5] =
    ["MongoTarget", "MongoRoleBinding", "CosmosTarget", "CosmosRoleDefinition", "CosmosRoleBinding"];

/// The dbgrant API version.
pub const API_VERSION: &str = "dbgrant.io/v1alpha1";

/// A ready cluster: control plane up, CRDs Established, the operator
/// namespace and the chart's RBAC in place.
#[derive(Clone)]
pub struct Cluster {
    /// Admin client (system:masters).
    pub admin: Client,
    /// Client authenticated as the operator's ServiceAccount.
    pub operator: Client,
    /// Kubeconfig of the admin.
    pub admin_kubeconfig: PathBuf,
    /// Kubeconfig of the operator identity.
    pub operator_kubeconfig: PathBuf,
    /// The operator's namespace.
    pub operator_namespace: String,
    /// The operator's user name.
    pub operator_user: String,
    /// The apiserver URL.
    pub server: String,
}

impl Cluster {
    /// The cluster shared by every test in this process; the control plane
    /// starts and the CRDs and RBAC are installed on first use.
    pub async fn shared() -> Result<Self> {
        static SETUP: OnceCell<std::result::Result<(), String>> = OnceCell::const_new();
        let info = tokio::task::spawn_blocking(ControlPlane::shared).await??;
        let cluster = Self::connect(&info).await?;
        SETUP
            .get_or_init(|| async { cluster.install().await.map_err(|e| format!("{e:#}")) })
            .await
            .clone()
            .map_err(|e| anyhow!("installing dbgrant into the local control plane: {e}"))?;
        Ok(cluster)
    }

    /// Clients for a running control plane.
    pub async fn connect(info: &crate::controlplane::Info) -> Result<Self> {
        Ok(Self {
            admin: client(&info.admin_kubeconfig).await?,
            operator: client(&info.operator_kubeconfig).await?,
            admin_kubeconfig: info.admin_kubeconfig.clone(),
            operator_kubeconfig: info.operator_kubeconfig.clone(),
            operator_namespace: info.operator_namespace.clone(),
            operator_user: info.operator_user.clone(),
            server: info.server.clone(),
        })
    }

    /// The apiserver's ServiceAccount token issuer and the keys it
    /// publishes: `/.well-known/openid-configuration`'s `issuer`, and the
    /// JWKS at the path of its `jwks_uri` — what a relying party such as
    /// Entra workload identity federation reads.
    pub async fn service_account_issuer(&self) -> Result<(String, Value)> {
        let get = |path: String| async move {
            let request = http::Request::get(path.as_str()).body(Vec::new()).context("building a GET")?;
            let text = self.admin.request_text(request).await.with_context(|| format!("GET {path}"))?;
            serde_json::from_str::<Value>(&text).with_context(|| format!("GET {path}: not JSON"))
        };
        let discovery = get("/.well-known/openid-configuration".into()).await?;
        let issuer = discovery["issuer"].as_str().context("discovery document without issuer")?.to_string();
        let jwks_uri = discovery["jwks_uri"].as_str().context("discovery document without jwks_uri")?;
        let path = jwks_uri.parse::<http::Uri>().context("jwks_uri")?.path().to_string();
        Ok((issuer, get(path).await?))
    }

    /// Install the CRDs from `crds/` (waiting until Established), the
    /// operator namespace, and the operator's RBAC as the chart renders it.
    pub async fn install(&self) -> Result<()> {
        let started = Instant::now();
        let mut crds = Vec::new();
        let mut files: Vec<_> = std::fs::read_dir(paths::repo_root().join("crds"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
        files.sort();
        for f in &files {
            crds.extend(manifests::load(f)?);
        }
        self.apply_all(&self.admin, &crds, None).await?;
        for crd in &crds {
            let name = manifests::name(crd).to_string();
            self.wait_for(&self.admin, crd, Duration::from_secs(30), "Established", |o| {
                condition_status(o, "Established") == Some("True")
            })
            .await
            .with_context(|| format!("CRD {name}"))?;
        }
        self.ensure_namespace(&self.operator_namespace.clone()).await?;
        let rbac = chart::rbac(&chart::template(&self.operator_namespace, &[])?);
        self.apply_all(&self.admin, &rbac, None).await?;
        eprintln!(
            "harness: {} CRDs Established and chart RBAC applied in {:.1}s",
            crds.len(),
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// Install the chart's finalizer policy (`finalizerPolicy`, on by
    /// default) on a control plane started with
    /// [`crate::controlplane::MUTATING_ADMISSION_POLICY`], and wait until it
    /// acts: a server-side dry-run create of `probe` (a binding in an
    /// existing namespace) comes back with the finalizer. Until the
    /// apiserver has loaded the CRD's schema for the policy, creates are
    /// refused with 503; those are retried here.
    pub async fn install_finalizer_policy(&self, probe: &Value, finalizer: &str) -> Result<()> {
        let started = Instant::now();
        let docs = chart::template_for(
            &self.operator_namespace,
            &[],
            &["admissionregistration.k8s.io/v1beta1/MutatingAdmissionPolicy"],
        )?;
        let policy: Vec<Value> =
            docs.into_iter().filter(|d| manifests::kind(d).starts_with("MutatingAdmissionPolicy")).collect();
        if policy.len() != 2 {
            bail!(
                "the chart rendered {} MutatingAdmissionPolicy objects, want the policy and its binding",
                policy.len()
            );
        }
        self.apply_all(&self.admin, &policy, None).await?;
        let (ar, _) = self.resource(&self.admin, probe).await?;
        let ns = probe["metadata"]["namespace"].as_str().unwrap_or_default();
        let api = Api::<DynamicObject>::namespaced_with(self.admin.clone(), ns, &ar);
        let obj: DynamicObject = serde_json::from_value(probe.clone())?;
        let mut last = String::new();
        while started.elapsed() < Duration::from_secs(60) {
            match api.create(&PostParams { dry_run: true, ..Default::default() }, &obj).await {
                Ok(o) if o.metadata.finalizers.iter().flatten().any(|f| f == finalizer) => {
                    eprintln!("harness: finalizer policy active in {:.1}s", started.elapsed().as_secs_f64());
                    return Ok(());
                }
                Ok(_) => last = "created without the finalizer".into(),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        bail!("the finalizer policy did not act within 60s (last: {last})")
    }

    /// Create a namespace if it does not exist.
    pub async fn ensure_namespace(&self, name: &str) -> Result<()> {
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        self.apply(&self.admin, &ns, None).await.map(|_| ())
    }

    /// Wait until the controller-manager has set up namespace `name` (its
    /// `default` ServiceAccount and `kube-root-ca.crt` ConfigMap), so its
    /// writes there are over before anything is measured.
    pub async fn wait_namespace_set_up(&self, name: &str) -> Result<()> {
        use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
        let accounts: Api<ServiceAccount> = Api::namespaced(self.admin.clone(), name);
        let maps: Api<ConfigMap> = Api::namespaced(self.admin.clone(), name);
        for _ in 0..240 {
            if accounts.get_opt("default").await?.is_some() && maps.get_opt("kube-root-ca.crt").await?.is_some() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        bail!("the controller-manager did not set up namespace {name} within 60s")
    }

    /// A fresh namespace for one test, named `e2e-<label>-<n>`.
    pub async fn namespace(&self, label: &str) -> Result<TestNamespace> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let name = format!("e2e-{label}-{}-{}", std::process::id() % 100_000, SEQ.fetch_add(1, Ordering::Relaxed));
        self.ensure_namespace(&name).await?;
        Ok(TestNamespace { name })
    }

    /// The API resource for a manifest's apiVersion/kind.
    pub async fn resource(&self, client: &Client, doc: &Value) -> Result<(ApiResource, Scope)> {
        let api_version = doc["apiVersion"].as_str().ok_or_else(|| anyhow!("manifest without apiVersion"))?;
        let kind = manifests::kind(doc);
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let (ar, caps) =
            pinned_kind(client, &gvk).await.with_context(|| format!("discovering {api_version} {kind}"))?;
        Ok((ar, caps.scope))
    }

    /// An Api for a manifest's kind in its (or the given) namespace.
    pub async fn api_for(&self, client: &Client, doc: &Value, ns: Option<&str>) -> Result<Api<DynamicObject>> {
        let (ar, scope) = self.resource(client, doc).await?;
        Ok(match scope {
            Scope::Cluster => Api::all_with(client.clone(), &ar),
            Scope::Namespaced => {
                let ns = ns.or(doc["metadata"]["namespace"].as_str()).unwrap_or("default");
                Api::namespaced_with(client.clone(), ns, &ar)
            }
        })
    }

    /// An Api for a dbgrant kind (`ns` None for cluster-scoped kinds).
    pub async fn dbgrant(&self, client: &Client, kind: &str, ns: Option<&str>) -> Result<Api<DynamicObject>> {
        self.api_for(client, &json!({"apiVersion": API_VERSION, "kind": kind}), ns).await
    }

    /// Server-side apply one manifest as `client`, in `ns` when it is
    /// namespaced and has none of its own.
    pub async fn apply(&self, client: &Client, doc: &Value, ns: Option<&str>) -> Result<DynamicObject> {
        self.apply_with(client, doc, ns, false).await
    }

    /// Server-side apply with `dryRun=All`: validated and admitted by the
    /// apiserver, not stored.
    pub async fn dry_run(&self, client: &Client, doc: &Value, ns: Option<&str>) -> Result<DynamicObject> {
        self.apply_with(client, doc, ns, true).await
    }

    async fn apply_with(&self, client: &Client, doc: &Value, ns: Option<&str>, dry_run: bool) -> Result<DynamicObject> {
        let api = self.api_for(client, doc, ns).await?;
        let name = manifests::name(doc);
        let mut pp = PatchParams::apply(FIELD_MANAGER).force();
        pp.dry_run = dry_run;
        api.patch(name, &pp, &Patch::Apply(doc))
            .await
            .with_context(|| format!("applying {} {name}", manifests::kind(doc)))
    }

    /// Apply several manifests in order.
    pub async fn apply_all(&self, client: &Client, docs: &[Value], ns: Option<&str>) -> Result<()> {
        for d in docs {
            self.apply(client, d, ns).await?;
        }
        Ok(())
    }

    /// Create (not apply) a manifest, optionally as a dry run (validated and
    /// admitted, not stored); returns the apiserver's error as is, for
    /// validation tests.
    pub async fn create(
        &self,
        client: &Client,
        doc: &Value,
        ns: Option<&str>,
        dry_run: bool,
    ) -> Result<DynamicObject, kube::Error> {
        let api = self.api_for(client, doc, ns).await.map_err(|e| kube::Error::Service(e.into()))?;
        let obj: DynamicObject = serde_json::from_value(doc.clone()).map_err(kube::Error::SerdeError)?;
        api.create(&PostParams { dry_run, ..Default::default() }, &obj).await
    }

    /// Delete a manifest's object (no error when it is already gone).
    pub async fn delete(&self, client: &Client, doc: &Value, ns: Option<&str>) -> Result<()> {
        let api = self.api_for(client, doc, ns).await?;
        match api.delete(manifests::name(doc), &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The current object for a manifest, if it exists.
    pub async fn get(&self, client: &Client, doc: &Value, ns: Option<&str>) -> Result<Option<DynamicObject>> {
        let api = self.api_for(client, doc, ns).await?;
        Ok(api.get_opt(manifests::name(doc)).await?)
    }

    /// Poll until `pred` holds for the object named by `doc` (every 200 ms),
    /// or fail after `timeout` with what was last seen.
    pub async fn wait_for(
        &self,
        client: &Client,
        doc: &Value,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&DynamicObject) -> bool,
    ) -> Result<DynamicObject> {
        let api = self.api_for(client, doc, None).await?;
        let name = manifests::name(doc);
        let deadline = Instant::now() + timeout;
        let mut last = None;
        loop {
            match api.get_opt(name).await {
                Ok(Some(o)) if pred(&o) => return Ok(o),
                Ok(o) => last = o,
                Err(e) => eprintln!("harness: get {name}: {e}"),
            }
            if Instant::now() >= deadline {
                let seen = last.map(|o| serde_yaml::to_string(&o.data["status"]).unwrap_or_default());
                bail!(
                    "{} {name}: not {what} after {timeout:?}; last status:\n{}",
                    manifests::kind(doc),
                    seen.unwrap_or_else(|| "(object not found)".into())
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Wait until the object has condition `type_` with `status` and, when
    /// given, `reason`, for its current generation.
    pub async fn wait_condition(
        &self,
        doc: &Value,
        ns: Option<&str>,
        type_: &str,
        status: &str,
        reason: Option<&str>,
        timeout: Duration,
    ) -> Result<DynamicObject> {
        let mut doc = doc.clone();
        if let Some(ns) = ns {
            doc["metadata"]["namespace"] = json!(ns);
        }
        let what = format!("{type_}={status}{}", reason.map(|r| format!(" ({r})")).unwrap_or_default());
        self.wait_for(&self.admin, &doc, timeout, &what, |o| {
            let observed = o.data["status"]["observedGeneration"].as_i64();
            let c = condition(o, type_);
            observed == o.metadata.generation
                && c.is_some_and(|c| c["status"] == status && reason.is_none_or(|r| c["reason"] == r))
        })
        .await
    }

    /// Wait until the object is gone.
    pub async fn wait_gone(&self, doc: &Value, ns: Option<&str>, timeout: Duration) -> Result<()> {
        let api = self.api_for(&self.admin, doc, ns).await?;
        let name = manifests::name(doc);
        let deadline = Instant::now() + timeout;
        while api.get_opt(name).await?.is_some() {
            if Instant::now() >= deadline {
                bail!("{} {name} still exists after {timeout:?}", manifests::kind(doc));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }

    /// Events (events.k8s.io) in a namespace, as (type, reason, note).
    pub async fn events(&self, ns: &str) -> Result<Vec<(String, String, String)>> {
        let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(self.admin.clone(), ns);
        Ok(api
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .map(|e| (e.type_.unwrap_or_default(), e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
            .collect())
    }
}

/// A namespace created for one test. The local control plane has no
/// namespace controller, so namespaces are not deleted; names are unique.
#[derive(Clone, Debug)]
pub struct TestNamespace {
    /// Its name.
    pub name: String,
}

/// A client from a kubeconfig file.
pub async fn client(kubeconfig: &std::path::Path) -> Result<Client> {
    // kube asks rustls for the process-wide provider; pick ring, as the
    // operator does, so the choice never depends on feature unification.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kc = Kubeconfig::read_from(kubeconfig).with_context(|| format!("reading {}", kubeconfig.display()))?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// The condition of `type_` in an object's status, if any.
pub fn condition<'a>(o: &'a DynamicObject, type_: &str) -> Option<&'a Value> {
    o.data["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_)
}

/// The status of condition `type_`.
pub fn condition_status<'a>(o: &'a DynamicObject, type_: &str) -> Option<&'a str> {
    condition(o, type_)?["status"].as_str()
}
