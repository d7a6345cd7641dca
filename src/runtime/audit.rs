//! The audit trail: one JSON line for every write dbgrant makes to a
//! database or to Azure Resource Manager (a role, user, assignment or
//! definition created, updated or dropped; a drift correction; a
//! revocation), written as the write returns, with what the object was
//! before and after, what triggered it and the outcome. The schema is
//! versioned (`dbgrant.io/audit/v1`, documented in README) so a SIEM can
//! ingest it. A record never carries a secret: names, ids, roles,
//! privileges, scopes and Kubernetes metadata only.
//!
//! Not audited: dbgrant's own bookkeeping (the MongoDB ownership ledger,
//! the Cosmos DB released-assignments annotation) and reads.

use std::{
    io::Write,
    path::Path,
    sync::{Arc, Mutex, atomic::AtomicU64},
};

use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde_json::Value;

/// The record schema's version.
pub const SCHEMA: &str = "dbgrant.io/audit/v1";

/// The object whose reconcile made a write: a binding (apply, revocation,
/// expiry), a role definition, or a target (resync: drift correction,
/// orphans of bindings deleted while dbgrant was down). With the
/// Kubernetes audit log, `uid` and `resourceVersion` say who changed it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Trigger {
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    pub uid: Option<String>,
    pub generation: Option<i64>,
    pub resource_version: Option<String>,
    /// Managers of the object's spec, from its managedFields (`kubectl`,
    /// `argocd-controller`, `kustomize-controller`, …). dbgrant itself is
    /// left out: it never writes a spec, but the apiserver credits spec
    /// defaults filled in during its finalizer patch to it.
    pub field_managers: Vec<String>,
    /// The object is being deleted (its access is being revoked).
    pub deleting: bool,
}

impl Trigger {
    /// The trigger `obj`, as dbgrant's cache holds it.
    pub fn of<K: Resource<DynamicType = ()>>(obj: &K) -> Self {
        let meta = obj.meta();
        let mut field_managers: Vec<String> = meta
            .managed_fields
            .iter()
            .flatten()
            .filter_map(|m| m.manager.clone())
            .filter(|m| m != crate::MANAGER)
            .collect();
        field_managers.sort();
        field_managers.dedup();
        Trigger {
            kind: K::kind(&()).to_string(),
            namespace: obj.namespace(),
            name: obj.name_any(),
            uid: meta.uid.clone(),
            generation: meta.generation,
            resource_version: meta.resource_version.clone(),
            field_managers,
            deleting: meta.deletion_timestamp.is_some(),
        }
    }
}

/// A backend object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BackendObject {
    /// `role`, `user`, `assignment` or `definition`.
    pub kind: &'static str,
    /// `admin.<role>`, `$external.<user>`, or the ARM resource name.
    pub name: String,
}

/// One write.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub schema: &'static str,
    /// When the write returned (RFC 3339, UTC).
    pub time: String,
    /// `mongodb` or `cosmosdb`.
    pub backend: &'static str,
    /// The MongoTarget or CosmosTarget.
    pub target: String,
    pub object: BackendObject,
    /// `create`, `update` or `delete`; `validate` for the short-lived
    /// scratch role a refused grant is tried on (created, then deleted).
    pub action: &'static str,
    /// The backend command or ARM operation (`createRole`,
    /// `putRoleAssignment`, …).
    pub operation: &'static str,
    /// The object before the write, as dbgrant read it (None: absent).
    pub before: Option<Value>,
    /// The object the write asks for (None: deleted).
    pub after: Option<Value>,
    pub trigger: Trigger,
    /// The bindings (`namespace/name`) whose grants the object carries
    /// after the write.
    pub bindings: Vec<String>,
    /// `applied`, `accepted` (an Azure operation is still running),
    /// `refused` (the server said no) or `failed` (not known to be applied).
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Record {
    /// A short line for an Event: `created role admin.entra/…`.
    pub fn summary(&self) -> String {
        let verb = match (self.action, self.outcome) {
            (_, "refused") => "refused to ",
            (_, "failed") => "failed to ",
            _ => "",
        };
        let action = match (verb.is_empty(), self.action) {
            (true, "create") => "created",
            (true, "update") => "updated",
            (true, "delete") => "deleted",
            (true, "validate") => "validated",
            (_, a) => a,
        };
        format!("{verb}{action} {} {}", self.object.kind, self.object.name)
    }
}

/// Where records go: one JSON object per line.
pub struct Auditor {
    out: Mutex<Box<dyn Write + Send>>,
    written: AtomicU64,
}

impl Auditor {
    /// Records to `path` (appended), or to standard output for `-`.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let out: Box<dyn Write + Send> = if path.as_os_str() == "-" {
            Box::new(std::io::stdout())
        } else {
            Box::new(std::fs::OpenOptions::new().create(true).append(true).open(path)?)
        };
        Ok(Self::to(out))
    }

    /// Records to `out`.
    pub fn to(out: Box<dyn Write + Send>) -> Self {
        Self { out: Mutex::new(out), written: AtomicU64::new(0) }
    }

    /// Records nowhere (unit tests).
    pub fn discard() -> Self {
        Self::to(Box::new(std::io::sink()))
    }

    /// Records into memory, and the buffer they go to (tests that read the
    /// trail back).
    pub fn in_memory() -> (Self, Arc<Mutex<Vec<u8>>>) {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        (Self::to(Box::new(Memory(buffer.clone()))), buffer)
    }

    /// Write `record` as one line, flushed at once: a record is never
    /// held back in a buffer a crash would lose. A failure to write is
    /// logged, never fatal to the reconcile.
    pub fn write(&self, record: &Record) {
        let line = match serde_json::to_string(record) {
            Ok(l) => l + "\n",
            Err(e) => {
                tracing::error!(error = %e, "audit record could not be serialised");
                return;
            }
        };
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = out.write_all(line.as_bytes()).and_then(|()| out.flush()) {
            tracing::error!(error = %e, object = %record.object.name, "audit record could not be written");
            return;
        }
        self.written.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Records written so far.
    pub fn written(&self) -> u64 {
        self.written.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A writer into a shared buffer.
struct Memory(Arc<Mutex<Vec<u8>>>);

impl Write for Memory {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What a backend's sync needs to audit its writes, and the summaries of
/// the writes it made (for the trigger's Event).
pub struct Scope<'a> {
    pub auditor: &'a Auditor,
    pub backend: &'static str,
    pub target: &'a str,
    pub trigger: &'a Trigger,
    summaries: Mutex<Vec<String>>,
}

impl<'a> Scope<'a> {
    /// Audit writes to `target` on `backend`, triggered by `trigger`.
    pub fn new(auditor: &'a Auditor, backend: &'static str, target: &'a str, trigger: &'a Trigger) -> Self {
        Self { auditor, backend, target, trigger, summaries: Mutex::new(Vec::new()) }
    }

    /// One line per write recorded so far (`created role …`), in order.
    pub fn summaries(&self) -> Vec<String> {
        self.summaries.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Write the record of one write.
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        object: BackendObject,
        action: &'static str,
        operation: &'static str,
        before: Option<Value>,
        after: Option<Value>,
        bindings: Vec<String>,
        outcome: Result<&'static str, (&'static str, String)>,
    ) -> Record {
        let (outcome, message) = match outcome {
            Ok(o) => (o, None),
            Err((o, m)) => (o, Some(m)),
        };
        let record = Record {
            schema: SCHEMA,
            time: jiff::Timestamp::now().to_string(),
            backend: self.backend,
            target: self.target.to_string(),
            object,
            action,
            operation,
            before,
            after,
            trigger: self.trigger.clone(),
            bindings,
            outcome,
            message,
        };
        self.auditor.write(&record);
        self.summaries.lock().unwrap_or_else(|p| p.into_inner()).push(record.summary());
        record
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_json_line_per_record_in_the_versioned_schema() {
        let (auditor, buf) = Auditor::in_memory();
        let trigger = Trigger { kind: "MongoRoleBinding".into(), name: "b".into(), ..Default::default() };
        let scope = Scope::new(&auditor, "mongodb", "t", &trigger);
        let object = BackendObject { kind: "role", name: "admin.entra/g".into() };
        let r = scope.record(
            object.clone(),
            "create",
            "createRole",
            None,
            Some(serde_json::json!({"roles": []})),
            vec!["ns/b".into()],
            Ok("applied"),
        );
        assert_eq!(r.summary(), "created role admin.entra/g");
        scope.record(object, "delete", "dropRole", None, None, vec![], Err(("refused", "no".into())));
        let text = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(auditor.written(), 2);
        assert_eq!(lines[0]["schema"], SCHEMA);
        assert_eq!(lines[0]["trigger"]["kind"], "MongoRoleBinding");
        assert_eq!(lines[0]["bindings"][0], "ns/b");
        assert_eq!(lines[1]["outcome"], "refused");
        assert_eq!(lines[1]["message"], "no");
        assert_eq!(scope.summaries(), ["created role admin.entra/g", "refused to delete role admin.entra/g"]);
    }
}
