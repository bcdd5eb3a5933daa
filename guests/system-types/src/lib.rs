//! The shapes of the system table: what the `system` guest stores under each key and what its
//! queries answer. The guest writes and validates them; the node reads them. Both use these
//! types, so the contract between the two is checked by the compiler, not by string
//! comparisons. Keys and ids are lowercase hex text (64 digits), as in the table.
#![deny(missing_docs)]

use serde::{Deserialize, Serialize};

/// A peer's status (`peer/<key>/status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerStatus {
    /// Invited, not joined yet: not a member.
    Invited,
    /// A member.
    Active,
    /// A member that has been away for long.
    Dormant,
    /// No longer a member: its intentions in its refused ranges are not projected.
    Revoked,
}

impl PeerStatus {
    /// Every status, in the table's spelling.
    pub const ALL: [PeerStatus; 4] = [
        PeerStatus::Invited,
        PeerStatus::Active,
        PeerStatus::Dormant,
        PeerStatus::Revoked,
    ];

    /// The table's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerStatus::Invited => "invited",
            PeerStatus::Active => "active",
            PeerStatus::Dormant => "dormant",
            PeerStatus::Revoked => "revoked",
        }
    }

    /// Parses the table's spelling.
    pub fn parse(text: &str) -> Option<PeerStatus> {
        PeerStatus::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// True for active and dormant peers (they may connect, gossip and bootstrap).
    pub fn is_member(self) -> bool {
        matches!(self, PeerStatus::Active | PeerStatus::Dormant)
    }
}

impl std::fmt::Display for PeerStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An author-sequence range of a peer's intentions that is not projected: `(from, to)`,
/// inclusive, `None` for an open end. Stored as `[from, to|null]`.
pub type RefusedRange = (u64, Option<u64>);

/// The value of `peer/<key>/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusRecord {
    /// The status.
    pub status: PeerStatus,
    /// Refused ranges, oldest first.
    #[serde(default)]
    pub refused: Vec<RefusedRange>,
    /// Who wrote this record (stamped by the guest when applying).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// The intention that wrote it (stamped by the guest when applying).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<String>,
}

/// Where a store's peers come from (`strategy`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "strategy", rename_all = "lowercase")]
pub enum Strategy {
    /// Its own peers.
    #[default]
    Independent,
    /// Its parent's peers.
    Inherited {
        /// The parent store id.
        parent: String,
    },
}

impl Strategy {
    /// The parent, for an inherited strategy.
    pub fn parent(&self) -> Option<&str> {
        match self {
            Strategy::Independent => None,
            Strategy::Inherited { parent } => Some(parent),
        }
    }
}

/// A child store's status in its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChildStatus {
    /// Open on every peer.
    Active,
    /// Closed on every peer, data kept.
    Archived,
}

/// The value of `child/<store id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildRecord {
    /// Its name in the parent.
    pub alias: String,
    /// Its module hash.
    pub module: String,
    /// Active or archived.
    pub status: ChildStatus,
}

/// An invite's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InviteStatus {
    /// Not used yet.
    Valid,
    /// Used by a joiner.
    Claimed,
    /// Withdrawn.
    Revoked,
}

/// The value of `invite/<blake3 of the secret>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteRecord {
    /// Its status.
    pub status: InviteStatus,
    /// Expiry, milliseconds since the Unix epoch.
    pub expires_ms: u64,
    /// The member who issued it.
    pub invited_by: String,
    /// The peer that used it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_by: Option<String>,
}

/// One item of the `peers` query (and the answer of `peer`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerItem {
    /// The peer's key.
    pub peer: String,
    /// Its status (`None` when the table names the peer without a status).
    pub status: Option<PeerStatus>,
    /// Its name, when set.
    #[serde(default)]
    pub name: Option<String>,
    /// Where it last said it listens (`ip:port`).
    #[serde(default)]
    pub addrs: Vec<String>,
    /// Its refused ranges.
    #[serde(default)]
    pub refused: Vec<RefusedRange>,
    /// True when concurrent writes of its status are unresolved.
    #[serde(default)]
    pub conflicted: bool,
    /// Who wrote its status.
    #[serde(default)]
    pub by: Option<String>,
    /// The intention that wrote its status.
    #[serde(default)]
    pub op: Option<String>,
}

/// One item of the `children` query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildItem {
    /// The child store id.
    pub id: String,
    /// The child's record.
    #[serde(flatten)]
    pub record: ChildRecord,
    /// True when concurrent writes are unresolved.
    #[serde(default)]
    pub conflicted: bool,
}

/// A list answer (`{"items": [...]}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Items<T> {
    /// The items.
    pub items: Vec<T>,
}

/// The answer of the `store` query.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreInfo {
    /// The store's name, when set.
    pub name: Option<String>,
    /// Its peer strategy.
    #[serde(flatten)]
    pub strategy: Strategy,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_round_trip_in_the_tables_spelling() -> Result<(), serde_json::Error> {
        let record: StatusRecord =
            serde_json::from_str(r#"{"status": "revoked", "refused": [[5, null], [1, 2]]}"#)?;
        assert_eq!(record.status, PeerStatus::Revoked);
        assert_eq!(record.refused, vec![(5, None), (1, Some(2))]);
        assert_eq!(
            serde_json::to_string(&record)?,
            r#"{"status":"revoked","refused":[[5,null],[1,2]]}"#
        );
        let info: StoreInfo =
            serde_json::from_str(r#"{"name": "n", "strategy": "inherited", "parent": "ab"}"#)?;
        assert_eq!(info.strategy.parent(), Some("ab"));
        let info: StoreInfo = serde_json::from_str(r#"{"name": null, "strategy": "independent"}"#)?;
        assert_eq!(info.strategy, Strategy::Independent);
        assert!(serde_json::from_str::<StatusRecord>(r#"{"status": "boss"}"#).is_err());
        let child: ChildItem = serde_json::from_str(
            r#"{"id": "c", "alias": "a", "module": "m", "status": "archived", "conflicted": false}"#,
        )?;
        assert_eq!(child.record.status, ChildStatus::Archived);
        Ok(())
    }
}
