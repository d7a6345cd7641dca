//! When a binding's access ends, and when to look at it again.

use std::time::Duration;

use jiff::Timestamp;

use crate::api::Expiry;

/// Where a binding stands relative to its expiry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpiryState {
    /// No expiry set.
    Never,
    /// Access is valid until the instant.
    Until(Timestamp),
    /// Access ended at the instant.
    Expired(Timestamp),
}

impl ExpiryState {
    /// The expiry instant, if any.
    pub fn instant(self) -> Option<Timestamp> {
        match self {
            ExpiryState::Never => None,
            ExpiryState::Until(t) | ExpiryState::Expired(t) => Some(t),
        }
    }

    /// Whether access has ended.
    pub fn is_expired(self) -> bool {
        matches!(self, ExpiryState::Expired(_))
    }
}

/// Parse a binding duration such as `12h`, `30d` or `1w2d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.is_empty() || !s.chars().all(|c| c.is_ascii_digit() || "wdhms".contains(c)) {
        return Err(format!("duration {s:?} must look like 12h, 30d or 1w2d (units s, m, h, d, w)"));
    }
    humantime::parse_duration(s).map_err(|e| format!("duration {s:?} is invalid: {e}"))
}

/// The instant access ends: `expiresAt`, or `created + duration`.
pub fn expiry_instant(created: Option<Timestamp>, expiry: &Expiry) -> Result<Option<Timestamp>, String> {
    match (&expiry.expires_at, &expiry.duration) {
        (Some(_), Some(_)) => Err("set at most one of expiresAt and duration".into()),
        (Some(at), None) => Ok(Some(at.0)),
        (None, Some(d)) => {
            let d = parse_duration(d)?;
            let created = created.ok_or("duration needs the binding's creation time")?;
            let span = jiff::SignedDuration::try_from(d).map_err(|e| format!("duration is too long: {e}"))?;
            created.checked_add(span).map(Some).map_err(|_| "duration reaches past the year 9999".to_string())
        }
        (None, None) => Ok(None),
    }
}

/// Classify `expires` relative to `now`. Access ends *at* the instant.
pub fn state(now: Timestamp, expires: Option<Timestamp>) -> ExpiryState {
    match expires {
        None => ExpiryState::Never,
        Some(t) if now >= t => ExpiryState::Expired(t),
        Some(t) => ExpiryState::Until(t),
    }
}

/// Whether access with `expiry`, on an object created at `created`, has
/// ended at `now`. An expiry that cannot be worked out counts as ended: it
/// never keeps access.
pub fn has_ended(created: Option<Timestamp>, expiry: &Expiry, now: Timestamp) -> bool {
    expiry_instant(created, expiry).map_or(true, |at| state(now, at).is_expired())
}

/// When to reconcile again: the periodic resync, or the expiry instant if
/// that comes first, so revocation happens on time without polling.
pub fn requeue_after(now: Timestamp, state: ExpiryState, resync: Duration) -> Duration {
    match state {
        ExpiryState::Until(t) => {
            let left = t.duration_since(now);
            let left = Duration::try_from(left).unwrap_or(Duration::ZERO);
            // Wake a hair after the instant so the next look sees it expired.
            left.saturating_add(Duration::from_millis(10)).min(resync)
        }
        ExpiryState::Never | ExpiryState::Expired(_) => resync,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn expires_at_is_used_as_is() {
        let e = Expiry { expires_at: Some(Time(ts("2030-01-01T00:00:00Z"))), duration: None };
        assert_eq!(expiry_instant(None, &e).unwrap(), Some(ts("2030-01-01T00:00:00Z")));
    }

    #[test]
    fn duration_counts_from_creation() {
        let e = Expiry { expires_at: None, duration: Some("1w2d3h".into()) };
        let got = expiry_instant(Some(ts("2030-01-01T00:00:00Z")), &e).unwrap();
        assert_eq!(got, Some(ts("2030-01-10T03:00:00Z")));
    }

    #[test]
    fn both_set_or_bad_duration_is_an_error_not_a_panic() {
        let both = Expiry { expires_at: Some(Time(ts("2030-01-01T00:00:00Z"))), duration: Some("1h".into()) };
        assert!(expiry_instant(None, &both).is_err());
        for bad in ["", "1x", "h", "-1h", "1.5h", "99999999999999999999d"] {
            let e = Expiry { expires_at: None, duration: Some(bad.into()) };
            assert!(expiry_instant(Some(ts("2030-01-01T00:00:00Z")), &e).is_err(), "{bad}");
        }
    }

    #[test]
    fn access_ends_exactly_at_the_instant() {
        let at = ts("2030-01-01T00:00:00Z");
        assert_eq!(state(ts("2029-12-31T23:59:59Z"), Some(at)), ExpiryState::Until(at));
        assert_eq!(state(at, Some(at)), ExpiryState::Expired(at));
        assert_eq!(state(at, None), ExpiryState::Never);
    }

    #[test]
    fn access_that_cannot_be_worked_out_has_ended() {
        let created = Some(ts("2030-01-01T00:00:00Z"));
        let hour = Expiry { expires_at: None, duration: Some("1h".into()) };
        assert!(!has_ended(created, &hour, ts("2030-01-01T00:59:59Z")));
        assert!(has_ended(created, &hour, ts("2030-01-01T01:00:00Z")));
        assert!(!has_ended(None, &Expiry { expires_at: None, duration: None }, ts("2030-01-01T01:00:00Z")));
        assert!(has_ended(None, &hour, ts("2030-01-01T00:00:00Z")), "a duration without a creation time");
        assert!(has_ended(
            created,
            &Expiry { expires_at: None, duration: Some("1x".into()) },
            ts("2000-01-01T00:00:00Z")
        ));
    }

    #[test]
    fn requeue_targets_the_expiry_instant_when_it_comes_before_resync() {
        let now = ts("2030-01-01T00:00:00Z");
        let resync = Duration::from_secs(300);
        let soon = state(now, Some(ts("2030-01-01T00:00:42Z")));
        assert_eq!(requeue_after(now, soon, resync), Duration::from_millis(42_010));
        let late = state(now, Some(ts("2030-02-01T00:00:00Z")));
        assert_eq!(requeue_after(now, late, resync), resync);
        assert_eq!(requeue_after(now, ExpiryState::Never, resync), resync);
    }
}
