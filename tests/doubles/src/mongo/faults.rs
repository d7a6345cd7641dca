//! Fault injection: latency, per-command delays, injected errors and dropped
//! connections.

use super::journal::CommandKind;
use std::collections::HashMap;
use std::time::Duration;

/// What an injected fault does to the command it hits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultAction {
    /// Reply `{ok: 0, code, errmsg}` without running the command.
    Fail {
        /// Error code to return.
        code: i32,
        /// `errmsg` to return.
        message: String,
    },
    /// Close the connection without running the command or replying.
    DropBeforeApply,
    /// Run the command, then close the connection without replying: the
    /// client cannot tell whether its write happened.
    DropAfterApply,
}

/// A fault armed for the next `remaining` matching commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// What happens.
    pub action: FaultAction,
    /// Only commands with this exact name; `None` matches every command
    /// except the handshake (`hello`/`isMaster`) and authentication
    /// (`saslStart`/`saslContinue`), so the driver's monitor is unaffected.
    pub command: Option<String>,
    /// How many more commands it hits.
    pub remaining: u32,
}

impl Fault {
    fn matches(&self, name: &str, kind: CommandKind) -> bool {
        match &self.command {
            Some(c) => c == name,
            None => !matches!(kind, CommandKind::Handshake | CommandKind::Auth),
        }
    }
}

/// Armed faults and timing, behind the server's lock.
#[derive(Debug)]
pub(crate) struct Faults {
    queue: Vec<Fault>,
    latency: Duration,
    delays: HashMap<String, Duration>,
}

impl Faults {
    pub(crate) fn new(latency: Duration) -> Self {
        Self { queue: Vec::new(), latency, delays: HashMap::new() }
    }

    pub(crate) fn arm(&mut self, fault: Fault) {
        if fault.remaining > 0 {
            self.queue.push(fault);
        }
    }

    pub(crate) fn clear(&mut self) {
        self.queue.clear();
    }

    pub(crate) fn set_latency(&mut self, latency: Duration) {
        self.latency = latency;
    }

    pub(crate) fn set_delay(&mut self, command: &str, delay: Option<Duration>) {
        match delay {
            Some(d) => self.delays.insert(command.to_string(), d),
            None => self.delays.remove(command),
        };
    }

    /// How long `command` takes: its own delay if set, else the latency.
    pub(crate) fn delay_for(&self, command: &str) -> Duration {
        self.delays.get(command).copied().unwrap_or(self.latency)
    }

    /// Consumes one hit of the first fault matching this command.
    pub(crate) fn take(&mut self, name: &str, kind: CommandKind) -> Option<FaultAction> {
        let index = self.queue.iter().position(|f| f.matches(name, kind))?;
        let fault = &mut self.queue[index];
        fault.remaining -= 1;
        let action = fault.action.clone();
        if fault.remaining == 0 {
            self.queue.remove(index);
        }
        Some(action)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_count_down_and_skip_the_handshake() {
        let mut faults = Faults::new(Duration::from_millis(2));
        faults.arm(Fault { action: FaultAction::DropBeforeApply, command: None, remaining: 2 });
        faults.arm(Fault {
            action: FaultAction::Fail { code: 13, message: "x".into() },
            command: Some("createRole".into()),
            remaining: 1,
        });
        assert_eq!(faults.take("hello", CommandKind::Handshake), None);
        assert_eq!(faults.take("ping", CommandKind::Other), Some(FaultAction::DropBeforeApply));
        assert_eq!(faults.take("ping", CommandKind::Other), Some(FaultAction::DropBeforeApply));
        assert!(matches!(
            faults.take("createRole", CommandKind::UserManagementWrite),
            Some(FaultAction::Fail { code: 13, .. })
        ));
        assert_eq!(faults.take("createRole", CommandKind::UserManagementWrite), None);
    }

    #[test]
    fn per_command_delay_overrides_latency() {
        let mut faults = Faults::new(Duration::from_millis(2));
        faults.set_delay("rolesInfo", Some(Duration::from_secs(1)));
        assert_eq!(faults.delay_for("rolesInfo"), Duration::from_secs(1));
        assert_eq!(faults.delay_for("ping"), Duration::from_millis(2));
        faults.set_delay("rolesInfo", None);
        assert_eq!(faults.delay_for("rolesInfo"), Duration::from_millis(2));
    }
}
