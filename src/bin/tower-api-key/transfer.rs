//! `export` and `import`: keys (with their owners' settings and the audit trail) moved from one
//! store to another as JSON lines, and keys issued before this crate brought in by their
//! digest. An import adds what the store lacks and never changes what it holds, so one that
//! stopped half way is run again.

use std::collections::{BTreeSet, HashSet};
use std::io::{Read, Write};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tower_api_key::clock::unix_seconds;
use tower_api_key::key::{KeyFormat, SecretDigest, MAX_KEY_LEN};
use tower_api_key::limit::{Credits, Limits};
use tower_api_key::manage::{is_valid_name, AuditEvent, Imported, ManageError};
use tower_api_key::manage::{MAX_NAME_LEN, MAX_UNIX_SECONDS};
use tower_api_key::store::{AuditArchive, AuditQuery, AuditRow};
use tower_api_key::store::{KeyFilter, KeyRecord, KeyStore, KeyStoreAdmin, OwnerRecord};
use tower_api_key::{AnyStore, KeyManager};

use crate::failure::{invalid, Failure};
use crate::shown::Shown;
use crate::trail::Trail;

/// The most refused lines an import names before it stops listing them.
const NAMED: usize = 20;

/// The fields of a key's record (`KeyRecord`): a line with another is refused, so that a
/// misspelt field (`scope`) is not left out unnoticed.
const RECORD_FIELDS: [&str; 17] = [
    "id",
    "digest",
    "name",
    "owner",
    "environment",
    "scopes",
    "metadata",
    "created_at",
    "expires_at",
    "revoked_at",
    "disabled",
    "plan",
    "limits",
    "allowed_networks",
    "credits",
    "last_used_at",
    "requests",
];

/// How many audit rows an import gives the store at once.
const AUDIT_PIECE: usize = 500;

/// The latest time an audit line may hold, in Unix microseconds: the last microsecond of the
/// last second a record keeps (the end of the year 9999).
const LATEST_AUDIT_MICROS: u64 = (MAX_UNIX_SECONDS + 1) * 1_000_000 - 1;

/// Prints the keys `filter` lets through as JSON lines, each the record the store keeps (the
/// digest, never a secret), after the owners' limits and credits ([`owners_of`]); with
/// `audit`, then the audit trail's rows of those keys and owners (every row, without a filter).
pub(crate) async fn export(
    keys: &KeyManager<AnyStore>,
    filter: &KeyFilter,
    audit: bool,
) -> Result<(), Failure> {
    let listing = (keys.store())
        .list_page(filter, SystemTime::now(), 0, usize::MAX)
        .await?;
    let owners = owners_of(keys, filter, &listing.records).await?;
    let mut rows = Vec::new();
    if audit {
        // Each row read as an event before a line is written: a corrupt one prints nothing.
        for row in audit_of(keys, filter, &listing.records).await? {
            rows.push(AuditLine::try_from(row)?);
        }
    }
    // Written as they are encoded, not gathered first: a line at a time in memory.
    let write = || -> std::io::Result<()> {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        for owner in owners {
            write_line(&mut out, &OwnerLine::from(owner))?;
        }
        for record in &listing.records {
            write_line(&mut out, record)?;
        }
        for line in &rows {
            write_line(&mut out, line)?;
        }
        out.flush()
    };
    write().map_err(|e| Failure::new(1, format!("cannot write the export: {e}")))
}

/// Writes `value` to `out` as one line of JSON.
fn write_line(out: &mut impl Write, value: &impl Serialize) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    out.write_all(b"\n")
}

/// The owners' settings an export of `records` (the keys `filter` let through) carries: every
/// owner's set, without a filter (also of owners without keys); else those of the keys'
/// owners and of the filter's owner.
async fn owners_of(
    keys: &KeyManager<AnyStore>,
    filter: &KeyFilter,
    records: &[KeyRecord],
) -> Result<Vec<OwnerRecord>, Failure> {
    if *filter == KeyFilter::new() {
        return Ok(keys.store().owners().await?);
    }
    let mut names: BTreeSet<&str> = (records.iter())
        .filter_map(|record| record.owner.as_deref())
        .collect();
    names.extend(filter.owner.as_deref());
    let mut owners = Vec::new();
    for name in names {
        owners.extend(owner_settings(keys, name).await?);
    }
    Ok(owners)
}

/// The audit trail's rows an export of `records` (the keys `filter` let through) carries,
/// oldest first: every row without a filter; else the rows of those keys, of the filter's
/// owner, and of the settings of those keys' owners.
async fn audit_of(
    keys: &KeyManager<AnyStore>,
    filter: &KeyFilter,
    records: &[KeyRecord],
) -> Result<Vec<AuditRow>, Failure> {
    let mut rows = keys
        .store()
        .read_audit(&AuditQuery::newest(usize::MAX))
        .await?;
    rows.reverse();
    if *filter == KeyFilter::new() {
        return Ok(rows);
    }
    let ids: HashSet<&str> = records.iter().map(|record| record.id.as_str()).collect();
    let owners: HashSet<&str> = (records.iter())
        .filter_map(|record| record.owner.as_deref())
        .collect();
    rows.retain(|row| {
        let owner = row.owner.as_deref();
        ids.contains(row.key.as_str())
            || (filter.owner.is_some() && owner == filter.owner.as_deref())
            || (row.key.is_empty() && owner.is_some_and(|owner| owners.contains(owner)))
    });
    Ok(rows)
}

/// A row of the audit trail, as a line of an export or an import: `{"type": "audit", "id": …,
/// "at_us": …, "event": …}`, the event as `audit --json` prints it.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditLine {
    #[serde(rename = "type")]
    kind: AuditKind,
    /// The row's id: a move run again skips the rows the store holds by it.
    id: String,
    /// When, in Unix microseconds: the trail's order.
    at_us: u64,
    event: AuditEvent,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum AuditKind {
    Audit,
}

impl TryFrom<AuditRow> for AuditLine {
    type Error = Failure;

    /// The line of `row`; exit code 4 for a row whose data is not an event.
    fn try_from(row: AuditRow) -> Result<Self, Failure> {
        let event = serde_json::from_str(&row.data).map_err(|_| {
            Failure::new(
                4,
                format!("the store holds a corrupt audit row `{}`", Shown(&row.id)),
            )
        })?;
        Ok(AuditLine {
            kind: AuditKind::Audit,
            id: row.id,
            at_us: row.at,
            event,
        })
    }
}

impl AuditLine {
    /// What is wrong with the line, if anything: the store's trail and the console show it.
    fn check(&self) -> Result<(), String> {
        let event = &self.event;
        let id_chars = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        if self.id.is_empty() || self.id.len() > 64 || !self.id.chars().all(id_chars) {
            return Err("`id` is 1 to 64 letters, digits, - and _".to_owned());
        }
        if self.at_us > LATEST_AUDIT_MICROS || event.at > MAX_UNIX_SECONDS {
            return Err("`at_us` or `event.at` is past the year 9999".to_owned());
        }
        let key_id = &event.key_id;
        if key_id.len() > 64 || !key_id.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err("`event.key_id` is a key id, or empty".to_owned());
        }
        let names = [&event.actor, &event.action].into_iter();
        let names = names.chain(&event.owner).chain(&event.detail);
        if !names.into_iter().all(|name| is_valid_name(name)) {
            return Err(format!(
                "`event`'s actor, action, owner and detail are each 1 to {MAX_NAME_LEN} bytes, \
                 not blank, without control characters"
            ));
        }
        Ok(())
    }

    /// The row the store keeps.
    fn to_row(&self) -> AuditRow {
        let event = &self.event;
        let data = serde_json::to_string(event).expect("an audit event is JSON");
        AuditRow::new(
            &self.id,
            self.at_us,
            &event.key_id,
            event.owner.as_deref(),
            data,
        )
    }
}

/// An owner's limits and credits, as a line of an export or an import:
/// `{"type": "owner", "owner": …, "limits": …, "credits": …}`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OwnerLine {
    #[serde(rename = "type")]
    kind: OwnerKind,
    owner: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    limits: Option<Limits>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    credits: Option<Credits>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum OwnerKind {
    Owner,
}

impl From<OwnerRecord> for OwnerLine {
    fn from(settings: OwnerRecord) -> Self {
        OwnerLine {
            kind: OwnerKind::Owner,
            owner: settings.owner,
            limits: settings.limits,
            credits: settings.credits,
        }
    }
}

/// One line of an import.
enum Line {
    Key(Box<KeyRecord>),
    Owner(OwnerLine),
    Audit(Box<AuditLine>),
}

/// What an import did, line by line.
#[derive(Default)]
struct Outcome {
    added: Vec<String>,
    present: Vec<String>,
    brought_in: Vec<String>,
    opaque: usize,
    owners: Vec<String>,
    owners_present: Vec<String>,
    /// The audit rows added, and those the store held (or the file gave twice).
    audit_added: u64,
    audit_present: u64,
    refused: Vec<(usize, String)>,
}

/// Adds the keys and owners' settings of `file` (`-`: standard input) that the store lacks.
/// Every line is read and checked, by the same rules on an empty store (`dry`), before any is
/// written: a malformed file changes nothing. Then a line the store refuses (an id another key
/// has, an owner at its most keys) is named and the others are imported (exit code 2); a store
/// failure stops the import (exit code 4), which is then run again.
pub(crate) async fn import(
    trail: &Trail<'_>,
    dry: &KeyManager<AnyStore>,
    format: &KeyFormat,
    file: &str,
    json: bool,
    dry_run: bool,
) -> Result<(), Failure> {
    let lines = read_lines(file, format)?;
    let (mut checked, mut brought_in) = (Vec::new(), BTreeSet::new());
    for (number, line) in &lines {
        if let Line::Key(record) = line {
            match dry.import(KeyRecord::clone(record)).await {
                Ok(Imported::Added {
                    expiry_brought_in: true,
                }) => {
                    brought_in.insert(*number);
                }
                Ok(_) => {}
                Err(error) => checked.push((*number, error.to_string())),
            }
        }
    }
    if !checked.is_empty() {
        return Err(refused_lines("nothing was imported", &checked));
    }
    if dry_run {
        let outcome = preview(trail.keys, lines, &brought_in).await?;
        return conclude(&outcome, json, true);
    }
    let mut outcome = Outcome::default();
    let mut audit = Vec::new();
    for (number, line) in lines {
        let done = match line {
            Line::Owner(line) => import_owner(trail, line, &mut outcome).await,
            Line::Key(record) => import_key(trail, number, *record, &mut outcome).await,
            Line::Audit(line) => {
                audit.push(line.to_row());
                match audit.len() {
                    AUDIT_PIECE => import_audit(trail, &mut audit, &mut outcome).await,
                    _ => Ok(()),
                }
            }
        };
        done.map_err(|failure| stopped(failure, &outcome))?;
    }
    let done = import_audit(trail, &mut audit, &mut outcome).await;
    done.map_err(|failure| stopped(failure, &outcome))?;
    conclude(&outcome, json, false)
}

/// `failure`, which stopped an import after `outcome`: said to be run again.
fn stopped(failure: Failure, outcome: &Outcome) -> Failure {
    let message = format!(
        "{}; {} key(s) and {} audit row(s) were imported before: run the import again (what \
         is in the store already is skipped)",
        failure.message,
        outcome.added.len(),
        outcome.audit_added
    );
    Failure { message, ..failure }
}

/// Gives the store the audit rows of `rows` (emptied) that it lacks.
async fn import_audit(
    trail: &Trail<'_>,
    rows: &mut Vec<AuditRow>,
    outcome: &mut Outcome,
) -> Result<(), Failure> {
    let added = trail.keys.store().import_audit(rows).await?;
    outcome.audit_added += added;
    outcome.audit_present += rows.len() as u64 - added;
    rows.clear();
    Ok(())
}

/// Reports what the import did, or (`dry_run`) would do; exit code 2 naming the lines refused,
/// if any.
fn conclude(outcome: &Outcome, json: bool, dry_run: bool) -> Result<(), Failure> {
    report(outcome, json, dry_run);
    if outcome.refused.is_empty() {
        return Ok(());
    }
    let then = match dry_run {
        true => "nothing was imported (a dry run)",
        false => "the other lines were imported",
    };
    Err(refused_lines(then, &outcome.refused))
}

/// What importing `lines` would do, read from the store without writing to it: the keys it
/// lacks would be added (those of the lines in `brought_in` with their expiry brought within
/// the longest lifetime), those it holds left, a line whose id another key holds refused. An
/// owner's most keys is checked only as the keys are written.
async fn preview(
    keys: &KeyManager<AnyStore>,
    lines: Vec<(usize, Line)>,
    brought_in: &BTreeSet<usize>,
) -> Result<Outcome, Failure> {
    let mut outcome = Outcome::default();
    let mut held = HashSet::new();
    if lines.iter().any(|(_, line)| matches!(line, Line::Audit(_))) {
        let trail = AuditQuery::newest(usize::MAX);
        held = (keys.store().read_audit(&trail).await?.into_iter())
            .map(|row| row.id)
            .collect();
    }
    for (number, line) in lines {
        let record = match line {
            Line::Audit(line) => {
                match held.insert(line.id) {
                    true => outcome.audit_added += 1,
                    false => outcome.audit_present += 1,
                }
                continue;
            }
            Line::Owner(line) if owner_is_set(keys, &line.owner).await? => {
                outcome.owners_present.push(line.owner);
                continue;
            }
            Line::Owner(line) => {
                outcome.owners.push(line.owner);
                continue;
            }
            Line::Key(record) => record,
        };
        match keys.store().get(&record.id).await? {
            None => {
                if brought_in.contains(&number) {
                    outcome.brought_in.push(record.id.clone());
                }
                outcome.opaque += usize::from(record.is_opaque());
                outcome.added.push(record.id);
            }
            Some(held) if held.digest == record.digest => outcome.present.push(record.id),
            Some(_) => {
                let refused = ManageError::IdTaken(record.id).to_string();
                outcome.refused.push((number, refused));
            }
        }
    }
    Ok(outcome)
}

/// The limits and credits the store has set on `owner`, if any.
async fn owner_settings(
    keys: &KeyManager<AnyStore>,
    owner: &str,
) -> Result<Option<OwnerRecord>, Failure> {
    Ok(keys.owner(owner).await?.filter(|set| !set.is_empty()))
}

/// Whether the store has limits or credits set on `owner`.
async fn owner_is_set(keys: &KeyManager<AnyStore>, owner: &str) -> Result<bool, Failure> {
    Ok(owner_settings(keys, owner).await?.is_some())
}

/// Adds key `record` (of line `number`), unless the store has it.
async fn import_key(
    trail: &Trail<'_>,
    number: usize,
    record: KeyRecord,
    outcome: &mut Outcome,
) -> Result<(), Failure> {
    let (id, owner) = (record.id.clone(), record.owner.clone());
    let opaque = record.is_opaque();
    match trail.keys.import(record).await {
        Ok(Imported::Added { expiry_brought_in }) => {
            let mut event = trail.event("import", &id, owner.as_deref());
            if expiry_brought_in {
                event = event.detail(["expires_at"]);
                outcome.brought_in.push(id.clone());
            }
            trail.record(event).await;
            outcome.opaque += usize::from(opaque);
            outcome.added.push(id);
        }
        Ok(_) => outcome.present.push(id),
        Err(ManageError::Store(error)) => return Err(error.into()),
        Err(refused) => outcome.refused.push((number, refused.to_string())),
    }
    Ok(())
}

/// Sets the owner's limits and credits of `line`, unless the store has some for it already.
async fn import_owner(
    trail: &Trail<'_>,
    line: OwnerLine,
    outcome: &mut Outcome,
) -> Result<(), Failure> {
    let keys = trail.keys;
    if owner_is_set(keys, &line.owner).await? {
        outcome.owners_present.push(line.owner);
        return Ok(());
    }
    let mut changed = Vec::new();
    if line.limits.is_some() {
        keys.set_owner_limits(&line.owner, line.limits).await?;
        changed.push("limits");
    }
    if line.credits.is_some() {
        keys.set_owner_credits(&line.owner, line.credits).await?;
        changed.push("credits");
    }
    let event = trail.event("owner", "", Some(&line.owner)).detail(changed);
    trail.record(event).await;
    outcome.owners.push(line.owner);
    Ok(())
}

/// Prints what the import did, or (`dry_run`) would do.
fn report(outcome: &Outcome, json: bool, dry_run: bool) {
    if json {
        let refused: Vec<Value> = (outcome.refused.iter())
            .map(|(line, error)| json!({ "line": line, "error": error }))
            .collect();
        let out = json!({
            "dry_run": dry_run,
            "imported": outcome.added,
            "already_present": outcome.present,
            "expiry_brought_in": outcome.brought_in,
            "owners": outcome.owners,
            "owners_already_set": outcome.owners_present,
            "audit_rows_added": outcome.audit_added,
            "audit_rows_already_present": outcome.audit_present,
            "refused": refused,
        });
        println!("{out}");
        return;
    }
    let (imported, expire) = match dry_run {
        true => (
            "Would import (a dry run: nothing was written)",
            "would expire",
        ),
        false => ("Imported", "now expire"),
    };
    println!(
        "{imported} {} key(s) and the settings of {} owner(s).",
        outcome.added.len(),
        outcome.owners.len()
    );
    if outcome.audit_added + outcome.audit_present > 0 {
        let added = if dry_run { "would be added" } else { "added" };
        println!(
            "Audit trail: {} row(s) {added}, {} the store has already.",
            outcome.audit_added, outcome.audit_present
        );
    }
    if !outcome.present.is_empty() || !outcome.owners_present.is_empty() {
        println!(
            "Left as the store has them: {} key(s) and the settings of {} owner(s).",
            outcome.present.len(),
            outcome.owners_present.len()
        );
    }
    if !outcome.brought_in.is_empty() {
        println!(
            "{} key(s) expired later than --max-lifetime allows, or never: they {expire} at \
             the latest it allows:",
            outcome.brought_in.len()
        );
        for id in &outcome.brought_in {
            println!("  {}", Shown(id));
        }
    }
    if outcome.opaque > 0 {
        println!(
            "{} opaque key(s): they work where the service's layer has .allow_opaque_keys(true).",
            outcome.opaque
        );
    }
}

/// Exit code 2, naming the lines refused (the first [`NAMED`]).
fn refused_lines(then: &str, refused: &[(usize, String)]) -> Failure {
    let mut failure = invalid(format!("{} line(s) refused, {then}:", refused.len()));
    failure.details = (refused.iter().take(NAMED))
        .map(|(line, error)| format!("line {line}: {error}"))
        .collect();
    if refused.len() > NAMED {
        (failure.details).push(format!("and {} more", refused.len() - NAMED));
    }
    failure
}

/// The lines of `file` (`-`: standard input), numbered from 1, blank ones left out; exit code 2
/// naming every line that is not one (the first [`NAMED`]).
fn read_lines(file: &str, format: &KeyFormat) -> Result<Vec<(usize, Line)>, Failure> {
    let mut text = String::new();
    let read = if file == "-" {
        std::io::stdin().read_to_string(&mut text).map(drop)
    } else {
        std::fs::File::open(file).and_then(|mut f| f.read_to_string(&mut text).map(drop))
    };
    read.map_err(|e| invalid(format!("cannot read `{}`: {e}", Shown(file))))?;
    let now = unix_seconds(SystemTime::now());
    let (mut lines, mut refused) = (Vec::new(), Vec::new());
    for (number, text) in (1..).zip(text.lines()) {
        if text.trim().is_empty() {
            continue;
        }
        match parse_line(text, format, now) {
            Ok(line) => lines.push((number, line)),
            Err(error) => refused.push((number, error)),
        }
    }
    if refused.is_empty() {
        Ok(lines)
    } else {
        Err(refused_lines("nothing was imported", &refused))
    }
}

/// One line: a key's record (as `export` prints it, or `generate --json` as its `record`), an
/// opaque key by `opaque_sha256` (the hex of the SHA-256 of the whole key) or `opaque_key` (the
/// key itself, hashed as it is read) instead of `id` and `digest`, an owner's settings
/// (`"type": "owner"`), or a row of the audit trail (`"type": "audit"`). `created_at` may be
/// left out (now). An error never quotes the line, which may hold a key.
fn parse_line(text: &str, format: &KeyFormat, now: u64) -> Result<Line, String> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| format!("not JSON (column {})", e.column()))?;
    let Value::Object(mut fields) = value else {
        return Err("not a JSON object".to_owned());
    };
    match fields.get("type") {
        None => {}
        Some(Value::String(kind)) if kind == "owner" => {
            let line: OwnerLine = typed(fields)?;
            return if is_valid_name(&line.owner) {
                Ok(Line::Owner(line))
            } else {
                Err(format!(
                    "an owner is 1 to {MAX_NAME_LEN} bytes, not blank, without control characters"
                ))
            };
        }
        Some(Value::String(kind)) if kind == "audit" => {
            let line: AuditLine = typed(fields)?;
            line.check()?;
            return Ok(Line::Audit(Box::new(line)));
        }
        Some(_) => return Err("`type` is \"owner\", \"audit\", or absent for a key".to_owned()),
    }
    let digest = opaque_digest(&mut fields, format)?;
    if let Some(digest) = digest {
        if fields.contains_key("id") || fields.contains_key("digest") {
            return Err("give `id` and `digest`, or an opaque key: not both".to_owned());
        }
        fields.insert("id".into(), digest.to_hex().into());
        fields.insert("digest".into(), digest.to_hex().into());
    }
    if let Some(field) = fields.keys().find(|f| !RECORD_FIELDS.contains(&f.as_str())) {
        return Err(format!(
            "unknown field `{}`, expected one of `{}`, `opaque_sha256`, `opaque_key`",
            Shown(field),
            RECORD_FIELDS.join("`, `")
        ));
    }
    fields.entry("created_at").or_insert(now.into());
    typed(fields).map(|record| Line::Key(Box::new(record)))
}

/// The digest of the opaque key a line gives by `opaque_sha256` or `opaque_key` (taken out of
/// `fields`), if it gives one.
fn opaque_digest(
    fields: &mut Map<String, Value>,
    format: &KeyFormat,
) -> Result<Option<SecretDigest>, String> {
    match (fields.remove("opaque_sha256"), fields.remove("opaque_key")) {
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err("give `opaque_sha256` or `opaque_key`: not both".to_owned()),
        (Some(Value::String(hex)), None) => SecretDigest::from_hex(&hex)
            .map(Some)
            .map_err(|_| "`opaque_sha256` is 64 hex digits".to_owned()),
        (None, Some(Value::String(key))) => {
            let visible = key.bytes().all(|b| b.is_ascii_graphic());
            if key.is_empty() || key.len() > MAX_KEY_LEN || !visible {
                return Err(format!(
                    "`opaque_key` is 1 to {MAX_KEY_LEN} visible ASCII characters, as a \
                     request presents it"
                ));
            }
            if format.claims(&key) {
                return Err(format!(
                    "`opaque_key` starts with `{}_`: the service reads it as one of its own \
                     keys, never as an opaque one",
                    format.prefix()
                ));
            }
            Ok(Some(SecretDigest::of(key.as_bytes())))
        }
        _ => Err("`opaque_sha256` and `opaque_key` are strings".to_owned()),
    }
}

/// `fields` as a `T`; an error names the field, never its value.
fn typed<T: for<'de> Deserialize<'de>>(fields: Map<String, Value>) -> Result<T, String> {
    serde_path_to_error::deserialize(Value::Object(fields)).map_err(|e| {
        let inner = e.inner().to_string();
        if inner.starts_with("missing field") || inner.starts_with("unknown field") {
            // serde names the field, and for an unknown one those expected: no value.
            inner
        } else {
            format!("`{}` is not of the right type or form", e.path())
        }
    })
}
