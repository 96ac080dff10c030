//! Checks of decoded values the schemas cannot express: every timestamp lies in a sane range, so
//! no stage does arithmetic on `i64::MIN` or a date in the year 300 million.

use super::{
    AliasRecord, AppEvent, CampaignEnvelope, CampaignLifecycleEvent, CampaignStats, Candidate,
    DeadLetter, Engagement, IngestForward, ProfileUpdate, Receipt, RunTally, SendCommand,
    SendConfirmed, Skip, UserMerge,
};

/// Earliest accepted timestamp: the Unix epoch.
pub const MIN_TIMESTAMP_MS: i64 = 0;
/// Latest accepted timestamp: 9999-12-31T23:59:59.999Z.
pub const MAX_TIMESTAMP_MS: i64 = 253_402_300_799_999;

/// A field of a decoded record whose value is out of range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidField {
    /// Field name, e.g. `timestamp_ms`.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

/// A record whose values can be checked after decoding.
pub trait Checked {
    /// The first out-of-range field, if any.
    fn check(&self) -> Result<(), InvalidField>;
}

/// Checks that `ms` (the value of `field`) is between the Unix epoch and the end of year 9999.
pub fn check_timestamp(field: &'static str, ms: i64) -> Result<(), InvalidField> {
    if (MIN_TIMESTAMP_MS..=MAX_TIMESTAMP_MS).contains(&ms) {
        return Ok(());
    }
    Err(InvalidField {
        field,
        reason: format!(
            "{ms} is outside the accepted range of epoch milliseconds \
             ({MIN_TIMESTAMP_MS}..={MAX_TIMESTAMP_MS}, 1970 to 9999)"
        ),
    })
}

fn check_optional(field: &'static str, ms: Option<i64>) -> Result<(), InvalidField> {
    ms.map_or(Ok(()), |ms| check_timestamp(field, ms))
}

macro_rules! timestamps {
    ($($record:ty => [$($field:ident),*] $([$($optional:ident),*])?;)*) => {$(
        impl Checked for $record {
            fn check(&self) -> Result<(), InvalidField> {
                $(check_timestamp(stringify!($field), self.$field)?;)*
                $($(check_optional(stringify!($optional), self.$optional)?;)*)?
                Ok(())
            }
        }
    )*};
}

timestamps! {
    AppEvent => [timestamp_ms];
    ProfileUpdate => [timestamp_ms];
    CampaignEnvelope => [issued_at_ms];
    CampaignLifecycleEvent => [timestamp_ms];
    Candidate => [qualified_at_ms];
    Engagement => [timestamp_ms];
    SendCommand => [created_at_ms] [expires_at_ms];
    Receipt => [timestamp_ms];
    CampaignStats => [as_of_ms];
    Skip => [timestamp_ms];
    SendConfirmed => [timestamp_ms];
    DeadLetter => [timestamp_ms];
    AliasRecord => [timestamp_ms];
    UserMerge => [timestamp_ms];
}

impl Checked for IngestForward {
    /// The forwarded record is checked when it is decoded in turn.
    fn check(&self) -> Result<(), InvalidField> {
        Ok(())
    }
}

impl Checked for RunTally {
    fn check(&self) -> Result<(), InvalidField> {
        check_timestamp("timestamp_ms", self.timestamp_ms)?;
        if self.partitions <= 0 || !(0..self.partitions).contains(&self.partition) {
            return Err(InvalidField {
                field: "partition",
                reason: format!(
                    "partition {} of {} partitions is not a partition",
                    self.partition, self.partitions
                ),
            });
        }
        if !(0..=crate::campaign::MAX_SHARDS as i32).contains(&self.shards) {
            return Err(InvalidField {
                field: "shards",
                reason: format!("{} shards is not a shard count", self.shards),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_outside_1970_to_9999_are_refused() {
        for ms in [0, 1_764_000_000_000, MAX_TIMESTAMP_MS] {
            assert_eq!(check_timestamp("t", ms), Ok(()), "{ms}");
        }
        for ms in [i64::MIN, -1, MAX_TIMESTAMP_MS + 1, i64::MAX] {
            let error = check_timestamp("t", ms).unwrap_err();
            assert_eq!(error.field, "t");
            assert!(error.reason.starts_with(&ms.to_string()), "{}", error.reason);
        }
    }
}
