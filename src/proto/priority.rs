//! A publish's priority, as the control plane's `priority` field and a client's `--priority`
//! name it (PROTOCOL.md, "Control-plane HTTP API").
//!
//! Owns the three names and their order. It never queues anything: the ingest core keeps one
//! lane per priority, served in this order.

use serde::{Deserialize, Serialize};

/// A publish's lane. Critical events overtake queued high and normal ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Critical,
    High,
    #[default]
    Normal,
}

impl Priority {
    /// Its lane's index, in the order the lanes are served: critical 0, high 1, normal 2.
    pub fn lane(self) -> usize {
        self as usize
    }

    /// Its name on the wire, as the `priority` field of a publish carries it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Critical => "critical",
            Self::High => "high",
            Self::Normal => "normal",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_serialized_names_and_lanes_follow_the_order() {
        for (priority, lane) in [
            (Priority::Critical, 0),
            (Priority::High, 1),
            (Priority::Normal, 2),
        ] {
            assert_eq!(
                serde_json::to_string(&priority).unwrap(),
                format!("\"{}\"", priority.name())
            );
            assert_eq!(priority.lane(), lane);
        }
    }
}
