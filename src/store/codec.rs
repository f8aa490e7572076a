//! One codec between a [`KeyRecord`] and the flat fields the SQL and Redis stores keep: text,
//! JSON text for the structured parts, Unix seconds for times. Reading back checks everything,
//! so a corrupt record is a [`StoreError`] (the request gets 503), never a panic.

#[cfg(feature = "redis")]
use std::collections::HashMap;
use std::time::SystemTime;

use super::{to_json, KeyRecord, OwnerRecord, StoreError};
use crate::clock::{from_unix_seconds, unix_seconds};
use crate::key::SecretDigest;
use crate::limit::{Credits, Limits, Refill, RefillPeriod};
use crate::trace::log_id;

/// A record as flat fields, in the SQL table's column order.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) struct Fields {
    pub(crate) id: String,
    /// The digest as 64 hex digits.
    pub(crate) digest: String,
    pub(crate) name: String,
    pub(crate) owner: Option<String>,
    pub(crate) environment: String,
    /// JSON array.
    pub(crate) scopes: String,
    /// JSON object.
    pub(crate) metadata: String,
    pub(crate) created_at: i64,
    pub(crate) expires_at: Option<i64>,
    pub(crate) revoked_at: Option<i64>,
    pub(crate) disabled: bool,
    pub(crate) plan: Option<String>,
    /// JSON object.
    pub(crate) limits: Option<String>,
    pub(crate) last_used_at: Option<i64>,
    pub(crate) requests: i64,
    /// JSON array of CIDRs; absent for none.
    pub(crate) allowed_networks: Option<String>,
    pub(crate) credits: CreditFields,
}

/// Credits as four flat fields (`credits_remaining`, `credits_refill_amount`,
/// `credits_refill_period`, `credits_period`), in a key's record and in an owner's.
#[derive(Default)]
pub(crate) struct CreditFields {
    /// Credits left; absent for none.
    pub(crate) remaining: Option<i64>,
    /// What credits are refilled to, if they are.
    pub(crate) refill_amount: Option<i64>,
    /// When: `daily` or `monthly:D`.
    pub(crate) refill_period: Option<String>,
    /// The refill period `remaining` belongs to.
    pub(crate) period: Option<i64>,
}

impl CreditFields {
    pub(crate) fn of(credits: Option<&Credits>) -> Self {
        let refill = credits.and_then(|c| c.refill);
        CreditFields {
            remaining: credits.map(|c| saturating_i64(c.remaining)),
            refill_amount: refill.map(|r| saturating_i64(r.amount)),
            refill_period: refill.map(|r| r.every.to_text()),
            period: credits.map(|c| i64::from(c.period)),
        }
    }

    /// The credits these fields hold; `corrupt` names a bad field.
    fn into_credits(
        self,
        corrupt: impl Fn(&str) -> StoreError,
    ) -> Result<Option<Credits>, StoreError> {
        let Some(remaining) = self.remaining else {
            return Ok(None);
        };
        let refill = match (self.refill_amount, self.refill_period) {
            (None, None) => None,
            (Some(amount), Some(every)) => Some(Refill {
                amount: u64::try_from(amount).map_err(|_| corrupt("credits_refill_amount"))?,
                every: RefillPeriod::from_text(&every)
                    .map_err(|_| corrupt("credits_refill_period"))?,
            }),
            _ => return Err(corrupt("credits_refill")),
        };
        Ok(Some(Credits {
            remaining: u64::try_from(remaining).map_err(|_| corrupt("credits_remaining"))?,
            refill,
            period: u32::try_from(self.period.unwrap_or(0))
                .map_err(|_| corrupt("credits_period"))?,
        }))
    }

    /// The fields as Redis hash fields, absent ones as `None`.
    #[cfg(feature = "redis")]
    pub(crate) fn into_hash(self) -> [(&'static str, Option<String>); 4] {
        [
            ("credits_remaining", self.remaining.map(|n| n.to_string())),
            (
                "credits_refill_amount",
                self.refill_amount.map(|n| n.to_string()),
            ),
            ("credits_refill_period", self.refill_period),
            ("credits_period", self.period.map(|n| n.to_string())),
        ]
    }

    /// The fields from a Redis hash; `corrupt` names a malformed one.
    #[cfg(feature = "redis")]
    fn from_hash(
        hash: &mut HashMap<String, String>,
        corrupt: impl Fn(&str) -> StoreError,
    ) -> Result<Self, StoreError> {
        let mut number = |name: &str| {
            hash.remove(name)
                .map(|t| t.parse::<i64>().map_err(|_| corrupt(name)))
                .transpose()
        };
        Ok(CreditFields {
            remaining: number("credits_remaining")?,
            refill_amount: number("credits_refill_amount")?,
            period: number("credits_period")?,
            refill_period: hash.remove("credits_refill_period"),
        })
    }
}

/// Limits from their JSON text, checked; `corrupt` names a bad one.
fn limits_of(
    text: Option<String>,
    corrupt: impl Fn(&str) -> StoreError,
) -> Result<Option<Limits>, StoreError> {
    let limits: Option<Limits> = text
        .map(|text| serde_json::from_str(&text).map_err(|_| corrupt("limits")))
        .transpose()?;
    if let Some(limits) = &limits {
        limits.validate().map_err(|_| corrupt("limits"))?;
    }
    Ok(limits)
}

/// What is set on an owner as flat fields, in the SQL owners table's column order.
pub(crate) struct OwnerFields {
    pub(crate) owner: String,
    /// JSON object.
    pub(crate) limits: Option<String>,
    pub(crate) credits: CreditFields,
}

impl OwnerFields {
    /// The owner's record these fields hold.
    ///
    /// # Errors
    /// A [`StoreError`] naming the corrupt field.
    pub(crate) fn into_record(self) -> Result<OwnerRecord, StoreError> {
        let owner = self.owner;
        let corrupt =
            |what: &str| StoreError::unavailable(format!("corrupt owner record {owner:?}: {what}"));
        let mut record = OwnerRecord::new(owner.clone());
        record.limits = limits_of(self.limits, corrupt)?;
        record.credits = self.credits.into_credits(corrupt)?;
        Ok(record)
    }

    /// The fields of owner `owner` from its Redis hash.
    ///
    /// # Errors
    /// A [`StoreError`] naming a malformed field.
    #[cfg(feature = "redis")]
    pub(crate) fn from_hash(
        owner: &str,
        mut hash: HashMap<String, String>,
    ) -> Result<Self, StoreError> {
        let corrupt =
            |what: &str| StoreError::unavailable(format!("corrupt owner record {owner:?}: {what}"));
        Ok(OwnerFields {
            owner: owner.to_owned(),
            limits: hash.remove("limits"),
            credits: CreditFields::from_hash(&mut hash, corrupt)?,
        })
    }
}

/// A count as a store writes it: at most `i64::MAX`.
pub(crate) fn saturating_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A time as a store writes it: Unix seconds (0 before 1970).
pub(crate) fn secs(at: SystemTime) -> i64 {
    i64::try_from(unix_seconds(at)).unwrap_or(i64::MAX)
}

/// `at` as Unix seconds rounded up, for a bound: a time a store keeps (whole seconds) is before
/// `at` exactly when it is before this.
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "redis"))]
pub(crate) fn secs_up(at: SystemTime) -> i64 {
    let since = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let up = (since.as_secs()).saturating_add(u64::from(since.subsec_nanos() > 0));
    i64::try_from(up).unwrap_or(i64::MAX)
}

impl Fields {
    /// The fields of `record`.
    pub(crate) fn of(record: &KeyRecord) -> Self {
        Fields {
            id: record.id.clone(),
            digest: record.digest.to_hex(),
            name: record.name.clone(),
            owner: record.owner.clone(),
            environment: record.environment.as_str().to_owned(),
            scopes: to_json(&record.scopes),
            metadata: to_json(&record.metadata),
            created_at: secs(record.created_at),
            expires_at: record.expires_at.map(secs),
            revoked_at: record.revoked_at.map(secs),
            disabled: record.disabled,
            plan: record.plan.clone(),
            limits: record.limits.as_ref().map(to_json),
            last_used_at: record.last_used_at.map(secs),
            requests: i64::try_from(record.requests).unwrap_or(i64::MAX),
            allowed_networks: (!record.allowed_networks.is_empty())
                .then(|| to_json(&record.allowed_networks)),
            credits: CreditFields::of(record.credits.as_ref()),
        }
    }

    /// The record these fields hold.
    ///
    /// # Errors
    /// A [`StoreError`] naming the corrupt field.
    pub(crate) fn into_record(self) -> Result<KeyRecord, StoreError> {
        let id = self.id;
        let corrupt = |what: &str| {
            StoreError::unavailable(format!("corrupt key record {}: {what}", log_id(&id)))
        };
        let time = |secs: i64, what: &str| {
            u64::try_from(secs)
                .ok()
                .and_then(from_unix_seconds)
                .ok_or_else(|| corrupt(what))
        };
        let optional_time = |secs: Option<i64>, what: &str| secs.map(|s| time(s, what)).transpose();
        let mut record = KeyRecord::new(
            id.clone(),
            SecretDigest::from_hex(&self.digest).map_err(|_| corrupt("digest"))?,
            self.name,
            self.environment
                .parse()
                .map_err(|_| corrupt("environment"))?,
        );
        record.owner = self.owner;
        record.scopes = serde_json::from_str(&self.scopes).map_err(|_| corrupt("scopes"))?;
        record.metadata = serde_json::from_str(&self.metadata).map_err(|_| corrupt("metadata"))?;
        record.created_at = time(self.created_at, "created_at")?;
        record.expires_at = optional_time(self.expires_at, "expires_at")?;
        record.revoked_at = optional_time(self.revoked_at, "revoked_at")?;
        record.disabled = self.disabled;
        record.plan = self.plan;
        record.limits = limits_of(self.limits, corrupt)?;
        record.last_used_at = optional_time(self.last_used_at, "last_used_at")?;
        record.requests = u64::try_from(self.requests).map_err(|_| corrupt("requests"))?;
        record.allowed_networks = self
            .allowed_networks
            .map(|text| serde_json::from_str(&text).map_err(|_| corrupt("allowed_networks")))
            .transpose()?
            .unwrap_or_default();
        record.credits = self.credits.into_credits(corrupt)?;
        Ok(record)
    }

    /// The fields as a Redis hash: every one as text, absent ones left out.
    #[cfg(feature = "redis")]
    pub(crate) fn into_hash(self) -> Vec<(&'static str, String)> {
        let mut hash = vec![
            ("digest", self.digest),
            ("name", self.name),
            ("environment", self.environment),
            ("scopes", self.scopes),
            ("metadata", self.metadata),
            ("created_at", self.created_at.to_string()),
            ("disabled", u8::from(self.disabled).to_string()),
            ("requests", self.requests.to_string()),
        ];
        let optional = [
            ("owner", self.owner),
            ("expires_at", self.expires_at.map(|t| t.to_string())),
            ("revoked_at", self.revoked_at.map(|t| t.to_string())),
            ("plan", self.plan),
            ("limits", self.limits),
            ("last_used_at", self.last_used_at.map(|t| t.to_string())),
            ("allowed_networks", self.allowed_networks),
        ];
        hash.extend(
            optional
                .into_iter()
                .chain(self.credits.into_hash())
                .filter_map(|(k, v)| v.map(|v| (k, v))),
        );
        hash
    }

    /// The fields of key `id` from its Redis hash.
    ///
    /// # Errors
    /// A [`StoreError`] naming a missing or malformed field.
    #[cfg(feature = "redis")]
    pub(crate) fn from_hash(
        id: &str,
        mut hash: HashMap<String, String>,
    ) -> Result<Self, StoreError> {
        let corrupt = |what: &str| {
            StoreError::unavailable(format!("corrupt key record {}: {what}", log_id(id)))
        };
        let credits = CreditFields::from_hash(&mut hash, corrupt)?;
        let mut take = |name: &str| hash.remove(name);
        let number = |text: Option<String>, what: &str| -> Result<Option<i64>, StoreError> {
            text.map(|t| t.parse::<i64>().map_err(|_| corrupt(what)))
                .transpose()
        };
        Ok(Fields {
            id: id.to_owned(),
            digest: take("digest").ok_or_else(|| corrupt("digest"))?,
            name: take("name").unwrap_or_default(),
            owner: take("owner"),
            environment: take("environment").ok_or_else(|| corrupt("environment"))?,
            scopes: take("scopes").unwrap_or_else(|| "[]".into()),
            metadata: take("metadata").unwrap_or_else(|| "{}".into()),
            created_at: number(take("created_at"), "created_at")?
                .ok_or_else(|| corrupt("created_at"))?,
            expires_at: number(take("expires_at"), "expires_at")?,
            revoked_at: number(take("revoked_at"), "revoked_at")?,
            disabled: take("disabled").is_some_and(|d| d == "1"),
            plan: take("plan"),
            limits: take("limits"),
            last_used_at: number(take("last_used_at"), "last_used_at")?,
            requests: number(take("requests"), "requests")?.unwrap_or(0),
            allowed_networks: take("allowed_networks"),
            credits,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use proptest::prelude::*;

    use super::*;
    use crate::key::Environment;
    use crate::limit::Limits;

    fn record() -> KeyRecord {
        let mut record = KeyRecord::new(
            "3kTMd9Qx2bLp",
            SecretDigest::of(b"s"),
            "ci",
            Environment::Test,
        );
        record.created_at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        record.expires_at = Some(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
        record.scopes = vec!["read".into()];
        record.metadata.insert("team".into(), "core".into());
        record.limits =
            Some(Limits::FREE.with(crate::limit::NamedLimit::new("burst", 10, 1).unwrap()));
        record.owner = Some("acme".into());
        record.requests = 7;
        record.credits = Some(Credits {
            remaining: 7,
            refill: Some(Refill {
                amount: 100,
                every: RefillPeriod::Monthly { day: 15 },
            }),
            period: 24_318,
        });
        record.allowed_networks = vec![
            "10.0.0.0/8".parse().unwrap(),
            "2001:db8::/32".parse().unwrap(),
        ];
        record
    }

    #[test]
    fn a_record_survives_the_fields() {
        let record = record();
        assert_eq!(Fields::of(&record).into_record().unwrap(), record);
    }

    #[test]
    fn corrupt_fields_are_errors_never_panics() {
        for corrupt in [
            |f: &mut Fields| f.digest = "not hex".into(),
            |f: &mut Fields| f.environment = "prod".into(),
            |f: &mut Fields| f.scopes = "[".into(),
            |f: &mut Fields| f.created_at = -1,
            |f: &mut Fields| f.revoked_at = Some(-5),
            |f: &mut Fields| f.limits = Some("{\"per_minute\": -3}".into()),
            |f: &mut Fields| {
                f.limits =
                    Some(r#"{"named": [{"name": "Bad Name", "limit": 1, "window": 1}]}"#.into())
            },
            |f: &mut Fields| {
                f.limits = Some(r#"{"named": [{"name": "a", "limit": 1, "window": 0}]}"#.into())
            },
            |f: &mut Fields| {
                f.limits = Some(
                    r#"{"named": [{"name": "a", "limit": 1, "window": 1}, {"name": "a", "limit": 2, "window": 1}]}"#
                        .into(),
                )
            },
            |f: &mut Fields| f.requests = -1,
            |f: &mut Fields| f.allowed_networks = Some("[\"10.0.0.0/33\"]".into()),
            |f: &mut Fields| f.allowed_networks = Some("10.0.0.0/8".into()),
            |f: &mut Fields| f.credits.remaining = Some(-1),
            |f: &mut Fields| f.credits.refill_period = Some("monthly:31".into()),
            |f: &mut Fields| f.credits.refill_amount = None,
            |f: &mut Fields| f.credits.period = Some(-2),
        ] {
            let mut fields = Fields::of(&record());
            corrupt(&mut fields);
            let error = fields.into_record().unwrap_err().to_string();
            assert!(error.contains("corrupt key record 3kTMd9Qx2bLp"), "{error}");
        }
    }

    /// Mostly what a sound record holds (`sound`), sometimes anything (`damaged`): so most
    /// cases get past the first fields and damage a later one.
    fn mostly<T: std::fmt::Debug + Clone + 'static>(
        sound: impl Strategy<Value = T> + 'static,
        damaged: impl Strategy<Value = T> + 'static,
    ) -> BoxedStrategy<T> {
        prop_oneof![6 => sound, 1 => damaged].boxed()
    }

    /// Text, JSON or not.
    fn any_text() -> BoxedStrategy<String> {
        prop_oneof![
            r#"\[("[a-z:*]{0,6}",?){0,3}\]"#,
            r#"\{("[a-z_]{1,12}": ?(-?[0-9]{1,21}|"[a-z0-9/.:]{0,12}"|true|\[\]),?){0,4}\}"#,
            ".{0,24}",
        ]
        .boxed()
    }

    /// A time or count field.
    fn number() -> BoxedStrategy<i64> {
        mostly(0i64..4_000_000_000_000, proptest::num::i64::ANY)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// Whatever a row or hash holds, reading it back gives a record or an error naming
        /// the record, never a panic.
        #[test]
        fn arbitrary_fields_are_a_record_or_an_error(
            digest in mostly("[0-9a-f]{64}", ".{0,70}"),
            environment in mostly("live|test|dev", ".{0,5}"),
            scopes in mostly(r#"\[("[a-z:*]{1,6}",?){0,3}"[a-z]{1,3}"\]"#, any_text()),
            metadata in mostly(r#"\{("[a-z]{1,5}": ?"[a-z]{0,5}", ?){0,3}"z": ""\}"#, any_text()),
            limits in proptest::option::of(mostly(
                r#"\{"(per_minute|burst|daily|monthly)": ?[0-9]{1,11}\}"#,
                any_text(),
            )),
            networks in proptest::option::of(mostly(
                r#"\["(10\.0\.0\.0/[0-9]{1,2}|::/[0-9]{1,3})"\]"#,
                any_text(),
            )),
            (created, last_used, requests) in (number(), proptest::option::of(number()), number()),
            (expires, revoked) in (proptest::option::of(number()), proptest::option::of(number())),
            credits in proptest::array::uniform3(proptest::option::of(number())),
            refill_period in proptest::option::of(mostly("daily|monthly:[0-9]{1,3}", ".{0,8}")),
        ) {
            let mut fields = Fields::of(&record());
            fields.digest = digest;
            fields.environment = environment;
            fields.scopes = scopes;
            fields.metadata = metadata;
            fields.limits = limits;
            fields.allowed_networks = networks;
            fields.created_at = created;
            fields.last_used_at = last_used;
            fields.requests = requests;
            fields.expires_at = expires;
            fields.revoked_at = revoked;
            fields.credits = CreditFields {
                remaining: credits[0],
                refill_amount: credits[1],
                refill_period,
                period: credits[2],
            };
            match fields.into_record() {
                Ok(record) => prop_assert_eq!(record.id, "3kTMd9Qx2bLp"),
                Err(error) => {
                    let error = error.to_string();
                    prop_assert!(error.contains("corrupt key record 3kTMd9Qx2bLp"), "{}", error);
                }
            }
        }
    }

    #[cfg(feature = "redis")]
    #[test]
    fn a_record_survives_the_redis_hash() {
        let record = record();
        let hash: HashMap<String, String> = Fields::of(&record)
            .into_hash()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        let back = Fields::from_hash(&record.id, hash)
            .unwrap()
            .into_record()
            .unwrap();
        assert_eq!(back, record);
    }
}
