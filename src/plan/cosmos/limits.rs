//! The account's limits, checked before anything is written.

/// Role assignments per account (Azure limit).
pub const ASSIGNMENT_LIMIT: usize = 2000;
/// Custom role definitions per account (Azure limit).
pub const DEFINITION_LIMIT: usize = 100;

/// The account's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Role assignments per account.
    pub assignments: usize,
    /// Custom role definitions per account.
    pub definitions: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { assignments: ASSIGNMENT_LIMIT, definitions: DEFINITION_LIMIT }
    }
}
