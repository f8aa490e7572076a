//! Bringing keys issued elsewhere into a store: [`KeyManager::import`] and what it did,
//! [`Imported`].

use super::manager::{outlives, validate_record};
use super::{InvalidKey, ManageError};
use crate::key::is_key_id;
use crate::store::{KeyRecord, KeyStoreAdmin, StoreError};
use crate::KeyManager;

/// What [`KeyManager::import`] did with a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Imported {
    /// The key was added to the store.
    Added {
        /// Its expiry (later than [the longest lifetime](KeyManager::max_key_lifetime) allows,
        /// or none) was brought within it.
        expiry_brought_in: bool,
    },
    /// The store has this key already (the same id and digest): nothing was changed, so that
    /// an import run again after a failure adds only what is missing.
    AlreadyPresent,
}

impl<A: KeyStoreAdmin> KeyManager<A> {
    /// Adds a key issued elsewhere, as its record: keys moved from another store (the records
    /// [`KeyStoreAdmin::list`] gives, or `tower-api-key export` prints), keys made offline with
    /// [`NewKey::generate`](crate::NewKey::generate), or the digests of keys issued before this
    /// crate ([`KeyRecord::opaque`], [`KeyRecord::opaque_digest`]). Every field is kept as given
    /// (state, credits, last use), except an expiry past [the longest
    /// lifetime](Self::max_key_lifetime), which is brought within it (as
    /// [`bring_within_lifetime`](Self::bring_within_lifetime) does for keys already stored).
    /// The layer's cache forgets the id, so a key refused as unknown a moment ago works at once.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// use tower_api_key::manage::Imported;
    /// use tower_api_key::store::{KeyRecord, KeyStoreAdmin};
    /// use tower_api_key::{key::KeyFormat, Environment, KeyManager, MemoryStore, NewKey};
    ///
    /// // Keys of one store moved to another, and a legacy key known only by its digest.
    /// let old = KeyManager::new(MemoryStore::new()).format(KeyFormat::new("mesh")?);
    /// old.create(NewKey::new("ci").scopes(["read"])).await?;
    /// let new = KeyManager::new(MemoryStore::new());
    /// for record in old.store().list().await? {
    ///     assert_eq!(new.import(record.clone()).await?, Imported::Added { expiry_brought_in: false });
    ///     // Run again: nothing is added twice.
    ///     assert_eq!(new.import(record).await?, Imported::AlreadyPresent);
    /// }
    /// let legacy = KeyRecord::opaque("old-key-7f3a9c", "legacy client", Environment::Live);
    /// new.import(legacy).await?;
    /// assert_eq!(new.list().await?.len(), 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    ///
    /// # Errors
    /// [`ManageError::Invalid`] for a record [`create`](Self::create) would not make: a bad
    /// name, owner, scope, metadata or limits, a time past the year 9999, or an id the layer
    /// never looks up ([`InvalidKey::Id`]: neither 12 base62 characters, signed with the
    /// format's id key if it has one, nor an opaque key's digest in hex);
    /// [`ManageError::IdTaken`] when the store holds another key (another digest) under the
    /// id; [`ManageError::TooManyKeys`] when the key is in circulation and its owner holds [the
    /// most keys](Self::max_keys_per_owner) already; [`ManageError::Store`] when the store fails.
    pub async fn import(&self, mut record: KeyRecord) -> Result<Imported, ManageError> {
        self.check_import(&record).map_err(ManageError::Invalid)?;
        let now = crate::clock::now();
        let mut expiry_brought_in = false;
        if let Some((latest, _)) = self.latest_expiry() {
            if outlives(&record, now, latest) {
                record.expires_at = Some(latest);
                expiry_brought_in = true;
            }
        }
        let most = (self.max_keys_per_owner)
            .filter(|_| record.owner.is_some() && record.in_circulation(now));
        // Twice at most: a key in the way that is deleted before it is read is no longer in
        // the way.
        for _ in 0..2 {
            let added = match most {
                Some(most) => self.store.create_within(record.clone(), most, now).await,
                None => self.store.create(record.clone()).await.map(|()| true),
            };
            // An owner at its most keys may hold this very key: imported before.
            let refused = match added {
                Ok(true) => {
                    self.changed(&record.id);
                    return Ok(Imported::Added { expiry_brought_in });
                }
                Ok(false) => ManageError::TooManyKeys(most.unwrap_or_default()),
                Err(StoreError::Conflict(_)) => ManageError::IdTaken(record.id.clone()),
                Err(error) => return Err(error.into()),
            };
            match self.store.get(&record.id).await? {
                Some(held) if bool::from(held.digest.ct_eq(&record.digest)) => {
                    return Ok(Imported::AlreadyPresent)
                }
                Some(_) => return Err(ManageError::IdTaken(record.id)),
                None if matches!(refused, ManageError::TooManyKeys(_)) => return Err(refused),
                None => {}
            }
        }
        Err(ManageError::IdTaken(record.id))
    }

    /// What [`import`](Self::import) refuses of `record` before the store sees it.
    fn check_import(&self, record: &KeyRecord) -> Result<(), InvalidKey> {
        validate_record(record)?;
        let issued = is_key_id(&record.id)
            && (self.format.as_ref()).is_none_or(|format| format.issued(&record.id));
        if record.is_opaque() || issued {
            Ok(())
        } else {
            Err(InvalidKey::Id)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use tower::{Layer, ServiceExt};

    use super::*;
    use crate::key::{IdKey, KeyFormat, SecretDigest};
    use crate::reject::Rejection;
    use crate::store::KeyStore;
    use crate::{ApiKeyLayer, Environment, MemoryStore, NewKey};

    fn format() -> KeyFormat {
        KeyFormat::new("mesh").unwrap()
    }

    /// A record issued offline in `format`.
    fn issued(format: &KeyFormat, name: &str) -> KeyRecord {
        NewKey::new(name).generate(format).unwrap().record
    }

    /// A key the layer refused as unknown a moment ago (and cached so) works as soon as it is
    /// imported: the import clears the id from the cache.
    #[tokio::test]
    async fn an_imported_key_works_at_once_where_it_was_unknown() {
        let store = MemoryStore::new();
        let layer = ApiKeyLayer::builder("mesh", store.clone())
            .allow_opaque_keys(true)
            .build()
            .unwrap();
        let keys = KeyManager::new(store).with_cache(layer.handle());
        let service = layer.layer(tower::service_fn(|_: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(()))
        }));
        let answer = |key: &'static str| {
            let request = http::Request::get("/")
                .header("authorization", format!("ApiKey {key}"))
                .body(())
                .unwrap();
            let service = service.clone();
            async move {
                let response = service.oneshot(request).await.unwrap();
                (
                    response.status(),
                    response.extensions().get::<Rejection>().copied(),
                )
            }
        };
        let legacy = "sk_old_4f9a2c7e";
        assert_eq!(
            answer(legacy).await,
            (
                http::StatusCode::UNAUTHORIZED,
                Some(Rejection::InvalidApiKey)
            )
        );
        let record = KeyRecord::opaque(legacy, "legacy", Environment::Live);
        assert_eq!(
            keys.import(record).await.unwrap(),
            Imported::Added {
                expiry_brought_in: false
            }
        );
        assert_eq!(answer(legacy).await, (http::StatusCode::OK, None));
    }

    /// Every field is kept as given; run again, nothing changes; another key under the id is
    /// refused.
    #[tokio::test]
    async fn records_are_kept_whole_once_and_never_replaced() {
        let keys = KeyManager::new(MemoryStore::new());
        let mut record = issued(&format(), "ci");
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000);
        record.created_at = now - Duration::from_secs(86_400);
        record.revoked_at = Some(now);
        record.last_used_at = Some(now - Duration::from_secs(60));
        record.requests = 42;
        record.owner = Some("acme".into());
        keys.import(record.clone()).await.unwrap();
        assert_eq!(
            keys.store().get(&record.id).await.unwrap(),
            Some(record.clone())
        );

        let mut changed = record.clone();
        changed.name = "renamed".into();
        assert_eq!(
            keys.import(changed).await.unwrap(),
            Imported::AlreadyPresent
        );
        assert_eq!(
            keys.store().get(&record.id).await.unwrap(),
            Some(record.clone())
        );

        let mut other = record.clone();
        other.digest = SecretDigest::of(b"another secret");
        match keys.import(other).await {
            Err(ManageError::IdTaken(id)) => assert_eq!(id, record.id),
            answer => panic!("another key under the id must be refused, got {answer:?}"),
        }
    }

    /// Ids the layer never looks up, names and times `create` refuses: refused before the
    /// store sees them.
    #[tokio::test]
    async fn records_create_would_refuse_are_refused() {
        let signed = format().with_id_key(IdKey::new(&[7; 32]).unwrap());
        let keys = KeyManager::new(MemoryStore::new()).format(signed.clone());
        let try_import = |record: KeyRecord| {
            let keys = &keys;
            async move { keys.import(record).await.map_err(|e| e.to_string()) }
        };
        let mut record = issued(&format(), "unsigned");
        let unsigned = try_import(record.clone()).await.unwrap_err();
        assert!(unsigned.contains("12 base62"), "{unsigned}");
        record = issued(&signed, "signed");
        assert!(
            try_import(record.clone()).await.is_ok(),
            "signed with the format's id key"
        );

        let digest = SecretDigest::of(b"legacy");
        let mut opaque = KeyRecord::opaque_digest(digest, "legacy", Environment::Live);
        assert!(try_import(opaque.clone()).await.is_ok());
        opaque.id = digest.to_hex().to_uppercase();
        assert!(
            try_import(opaque).await.is_err(),
            "the layer looks up the lowercase hex"
        );

        for id in ["", "short", "3kTMd9Qx2bL!", "3kTMd9Qx2bLpX"] {
            let mut record = issued(&format(), "id");
            record.id = id.into();
            assert!(try_import(record).await.is_err(), "id {id:?}");
        }
        let mut record = issued(&signed, "x");
        record.name = "bad\u{1b}[2J".into();
        assert!(
            try_import(record).await.is_err(),
            "a control character in the name"
        );
        let mut record = issued(&signed, "x");
        record.scopes = vec!["no spaces please".into()];
        assert!(try_import(record).await.is_err(), "a malformed scope");
        let mut record = issued(&signed, "x");
        record.revoked_at = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::MAX / 4));
        assert!(
            try_import(record).await.is_err(),
            "a time past the year 9999"
        );
        assert_eq!(
            keys.list().await.unwrap().len(),
            2,
            "the signed key and the opaque one"
        );
    }

    /// Two imports of one file at once (two operators, two replicas): every key is added once,
    /// the other import finds it present; an owner's keys never pass its most, whichever
    /// import adds them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn imports_at_once_add_each_key_once() {
        let store = MemoryStore::new();
        let manager = || KeyManager::new(store.clone()).max_keys_per_owner(5);
        let records: Vec<KeyRecord> = (0..40)
            .map(|i| {
                let mut record = issued(&format(), &format!("key {i}"));
                record.owner = (i % 4 == 0).then(|| "acme".to_owned());
                record
            })
            .collect();
        let run = |keys: KeyManager<MemoryStore>, records: Vec<KeyRecord>| {
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                for record in records {
                    outcomes.push(keys.import(record).await.map_err(|e| e.to_string()));
                    tokio::task::yield_now().await;
                }
                outcomes
            })
        };
        let mut reversed = records.clone();
        reversed.reverse();
        let (a, b) = (run(manager(), records.clone()), run(manager(), reversed));
        let (a, mut b) = (a.await.unwrap(), b.await.unwrap());
        b.reverse();
        let mut added_for_acme = 0;
        for ((record, a), b) in records.iter().zip(a).zip(b) {
            let added = [&a, &b]
                .iter()
                .filter(|o| matches!(o, Ok(Imported::Added { .. })))
                .count();
            if record.owner.is_some() {
                added_for_acme += added;
                assert!(added <= 1, "{a:?} {b:?}");
            } else {
                assert_eq!(added, 1, "{a:?} {b:?}");
                assert!(a.is_ok() && b.is_ok(), "{a:?} {b:?}");
            }
        }
        assert_eq!(added_for_acme, 5, "acme holds its most, no more");
        assert_eq!(store.list().await.unwrap().len(), 30 + 5);
    }

    /// The longest lifetime brings an imported key's expiry within it; the most keys per
    /// owner counts only keys in circulation.
    #[tokio::test]
    async fn imports_keep_the_managers_rules() {
        let day = Duration::from_secs(86_400);
        let keys = KeyManager::new(MemoryStore::new())
            .max_key_lifetime(90 * day)
            .max_keys_per_owner(1);
        let before = SystemTime::now();
        let mut record = issued(&format(), "forever");
        record.owner = Some("acme".into());
        assert_eq!(
            keys.import(record.clone()).await.unwrap(),
            Imported::Added {
                expiry_brought_in: true
            }
        );
        let expiry = keys
            .store()
            .get(&record.id)
            .await
            .unwrap()
            .unwrap()
            .expires_at
            .unwrap();
        assert!(expiry >= before + 90 * day && expiry <= SystemTime::now() + 90 * day);

        let mut soon = issued(&format(), "soon");
        soon.expires_at = Some(before + day);
        let mut revoked = soon.clone();
        revoked.id = issued(&format(), "x").id;
        revoked.owner = Some("acme".into());
        revoked.revoked_at = Some(before);
        assert_eq!(
            keys.import(revoked).await.unwrap(),
            Imported::Added {
                expiry_brought_in: false
            },
            "a revoked key is not in circulation: not counted, not limited"
        );
        soon.owner = Some("acme".into());
        assert!(matches!(
            keys.import(soon).await,
            Err(ManageError::TooManyKeys(1))
        ));
    }
}
