//! `tower-api-key`: create, list, show, rotate, revoke and delete API keys in the store a service
//! built on `tower-api-key` reads, move them to another store (`export`, `import`), and show the
//! usage its replicas flushed there. Every change is written to the store's audit trail
//! (`audit` prints it), which the console shows too.
//!
//! Exit codes: 0 success, 1 the output cannot be written, 2 bad input, 3 no such key, 4 the
//! store failed or cannot be reached. A change made whose audit row the store could not write
//! exits 0 with a warning: it is made.

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

mod failure;
mod shown;
mod trail;
mod transfer;

use clap::{Args, Parser, Subcommand};
use serde_json::json;
use tower_api_key::limit::{Credits, InvalidLimit, Limits, NamedLimit, RefillPeriod};
use tower_api_key::{
    clock::unix_seconds, key::IdKey, key::KeyFormat, manage::is_valid_name, manage::AuditEvent,
    manage::CreatedKey, manage::KeyInfo, manage::MAX_NAME_LEN, network, network::IpNet,
    store::AuditArchive, store::AuditQuery, store::KeyFilter, store::KeyState, store::KeyUpdate,
    store::StoreError, usage::Analytics, usage::Point, usage::Ranked, usage::Resolution,
    usage::Subject, usage::UsageReport, AnyStore, Environment, KeyManager, MemoryStore, NewKey,
};

use failure::{invalid, not_found, Failure};
use shown::Shown;
use trail::Trail;

/// Create, list, rotate and revoke API keys.
#[derive(Parser)]
#[command(name = "tower-api-key", version)]
struct Cli {
    /// Where the keys are: sqlite://FILE, postgres://…, redis://…
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://tower-api-key.db",
        global = true,
        hide_env_values = true
    )]
    database_url: String,
    /// The table of a SQLite or PostgreSQL store whose service keeps its keys in another than
    /// api_keys (`connect_with_table`).
    #[arg(
        long,
        env = "TOWER_API_KEY_TABLE",
        global = true,
        conflicts_with = "redis_prefix"
    )]
    table: Option<String>,
    /// The prefix of a Redis store's keys, where the service has another than tower-api-key:
    /// (`connect_with_prefix`).
    #[arg(long, env = "TOWER_API_KEY_REDIS_PREFIX", global = true)]
    redis_prefix: Option<String>,
    /// The prefix of the service's keys.
    #[arg(long, default_value = "mesh", global = true)]
    prefix: String,
    /// Print JSON, for scripts.
    #[arg(long, global = true)]
    json: bool,
    /// Sign the ids of the keys made with this id key (64 hex digits or more), the one the
    /// service's layer has (`ApiKeyLayerBuilder::id_key`); best given in the environment.
    #[arg(
        long,
        env = "TOWER_API_KEY_ID_KEY",
        global = true,
        hide_env_values = true
    )]
    id_key: Option<String>,
    /// Who is making the changes, as the audit trail names them (default: cli:$USER).
    #[arg(long, env = "TOWER_API_KEY_ACTOR", global = true)]
    actor: Option<String>,
    /// Let no key live longer than this from now, such as 90d: a key created (or generated)
    /// without --expires-in gets it, and a later expiry, or --no-expiry, is refused (exit code
    /// 2); a rotation keeps the old key's expiry, brought within it, and ends the old key's
    /// grace period within it too; apply-lifetime brings the keys issued before within it.
    #[arg(
        long,
        env = "TOWER_API_KEY_MAX_LIFETIME",
        global = true,
        value_parser = parse_duration,
        value_name = "DURATION"
    )]
    max_lifetime: Option<Duration>,
    /// Issue no key (exit code 2) to an owner that already has N keys in circulation (neither
    /// revoked nor expired; disabled ones count); a rotation may go one over while the old
    /// key's grace period runs, no further. Keys without an owner are not counted.
    #[arg(
        long,
        value_name = "N",
        env = "TOWER_API_KEY_MAX_PER_OWNER",
        global = true
    )]
    max_per_owner: Option<u32>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a new key and the record to store, without any store (for stores of your own).
    Generate(KeySpec),
    /// Create a key in the store; it is shown once.
    Create(KeySpec),
    /// List the keys (never their secrets), all or those the filters let through.
    List(ListFilter),
    /// Show one key (never its secret).
    Show {
        /// The key id.
        id: String,
    },
    /// Revoke a key: it never works again.
    Revoke {
        /// The key id.
        id: String,
    },
    /// Issue a new key with the same settings; the old one keeps working for the grace period.
    Rotate {
        /// The key id.
        id: String,
        /// How long the old key keeps working, such as 24h or 7d.
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        grace: Duration,
        /// The variable name in the `export` line shown with the new key.
        #[arg(long)]
        var: Option<String>,
    },
    /// Disable a key: refused with API_KEY_DISABLED until enabled again.
    Disable {
        /// The key id.
        id: String,
    },
    /// Enable a disabled key again (a revoked key stays revoked).
    Enable {
        /// The key id.
        id: String,
    },
    /// Delete a key.
    Delete {
        /// The key id.
        id: String,
    },
    /// Bring every key in circulation within --max-lifetime (which it needs): keys that expire
    /// later, or never (issued before the limit was set), now expire that long from now; the
    /// others keep their expiry.
    ApplyLifetime,
    /// Change a key's name, scopes, plan, expiry or metadata, all at once (or nothing, if one
    /// of them is refused).
    Update {
        /// The key id.
        id: String,
        /// A new name.
        #[arg(long)]
        name: Option<String>,
        /// New scopes, comma-separated (they replace the old).
        #[arg(long, value_delimiter = ',', conflicts_with = "no_scopes")]
        scopes: Option<Vec<String>>,
        /// Take every scope away (the key still authenticates, on routes that require none).
        #[arg(long)]
        no_scopes: bool,
        /// A new plan.
        #[arg(long, conflicts_with = "no_plan")]
        plan: Option<String>,
        /// Take the key off its plan.
        #[arg(long)]
        no_plan: bool,
        /// Expire this long from now, such as 30d.
        #[arg(long, value_parser = parse_duration, conflicts_with = "no_expiry")]
        expires_in: Option<Duration>,
        /// Never expire.
        #[arg(long)]
        no_expiry: bool,
        /// New metadata as key=value, repeatable: the entries given replace all the old ones.
        #[arg(long, value_parser = parse_entry, conflicts_with = "no_metadata")]
        metadata: Vec<(String, String)>,
        /// Remove all metadata.
        #[arg(long)]
        no_metadata: bool,
    },
    /// Replace a key's scopes.
    SetScopes {
        /// The key id.
        id: String,
        /// The new scopes, comma-separated.
        #[arg(value_delimiter = ',', required = true)]
        scopes: Vec<String>,
    },
    /// Give a key limits of its own (they replace its plan's limits), or with --none clear its
    /// own limits so its plan's apply again.
    SetLimits {
        /// The key id.
        id: String,
        #[command(flatten)]
        limits: LimitArgs,
        /// Clear the key's own limits.
        #[arg(long)]
        none: bool,
    },
    /// Show what is set on an owner (limits and credits for all of its keys together), or set
    /// it: --per-minute, --daily, --monthly, --limit (or --no-limits), --credits N with --refill
    /// (or --no-credits), --top-up N.
    Owner {
        /// The owner, as its keys name it (create --owner).
        owner: String,
        #[command(flatten)]
        limits: LimitArgs,
        /// Clear the owner's limits.
        #[arg(long)]
        no_limits: bool,
        /// A new budget of N credits for all of the owner's keys (a reset).
        #[arg(long, value_name = "N", conflicts_with = "no_credits")]
        credits: Option<u64>,
        /// Refill the credits to N: daily, monthly (on the 1st) or monthly:D (D from 1 to 28).
        #[arg(long, value_parser = parse_refill, requires = "credits")]
        refill: Option<RefillPeriod>,
        /// Add N credits to what the owner has left.
        #[arg(long, value_name = "N", conflicts_with = "no_credits")]
        top_up: Option<u64>,
        /// Remove the owner's credits.
        #[arg(long)]
        no_credits: bool,
    },
    /// Set a key's credits (--set N, refilled with --refill), add to them (--top-up N), or remove
    /// them (--none).
    Credits {
        /// The key id.
        id: String,
        /// A new budget of N credits (a reset).
        #[arg(long, value_name = "N", required_unless_present_any = ["top_up", "none"], conflicts_with_all = ["top_up", "none"])]
        set: Option<u64>,
        /// Refill to the --set amount: daily, monthly (on the 1st) or monthly:D (D from 1 to 28).
        #[arg(long, value_parser = parse_refill, requires = "set")]
        refill: Option<RefillPeriod>,
        /// Add N credits to what is left.
        #[arg(long, value_name = "N", conflicts_with = "none")]
        top_up: Option<u64>,
        /// Remove the key's credits: it is no longer metered.
        #[arg(long)]
        none: bool,
    },
    /// Restrict a key to networks (CIDRs or addresses, comma-separated), or with --anywhere lift
    /// the restriction.
    SetNetworks {
        /// The key id.
        id: String,
        /// The networks, such as 203.0.113.0/24,2001:db8::/32.
        #[arg(value_delimiter = ',', value_parser = parse_network, required_unless_present = "anywhere", conflicts_with = "anywhere")]
        networks: Vec<IpNet>,
        /// Let the key be used from anywhere.
        #[arg(long)]
        anywhere: bool,
    },
    /// Print the audit trail, newest first: every change made through this tool or the console.
    Audit {
        /// Only the changes of this key.
        #[arg(long)]
        key: Option<String>,
        /// Only the changes of this owner's keys (and of its settings).
        #[arg(long)]
        owner: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        limit: u32,
    },
    /// Show the usage the service's replicas flushed to the store (`Analytics`): requests,
    /// outcomes, errors, latency percentiles, top endpoints and countries, per bucket. As fresh
    /// as each replica's last flush.
    Usage {
        /// Only this key's.
        #[arg(long, conflicts_with = "owner")]
        key: Option<String>,
        /// Only this owner's keys'.
        #[arg(long)]
        owner: Option<String>,
        /// How far back, such as 24h or 30d (at most the resolution's retention: a day of
        /// minutes, 30 days of hours, 396 days of days).
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        since: Duration,
        /// The buckets' length: minute, hour or day.
        #[arg(long, default_value = "hour", value_parser = parse_resolution)]
        resolution: Resolution,
    },
    /// Print the keys as JSON lines, to import into another store: each the record the store
    /// keeps (the digest of the secret, never the secret), after the limits and credits of
    /// their owners; all keys, or those the filters let through.
    Export {
        #[command(flatten)]
        filter: ListFilter,
        /// Then the audit trail's rows (`{"type": "audit", …}`): every row, or with filters,
        /// those of the keys exported and of their owners.
        #[arg(long)]
        audit: bool,
    },
    /// Add keys from a file of JSON lines: records from `export` (or the `record` of
    /// `generate --json`), keys issued before this crate by `opaque_sha256` (the hex of the
    /// SHA-256 of the whole key) or `opaque_key`, owners' settings, and audit rows (`export
    /// --audit`). What the store has already is left as it is, so an import is run again
    /// after a failure.
    Import {
        /// The file, or - for standard input.
        file: String,
        /// Check the file and say what the import would do, writing nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Remove the audit trail's changes older than a time, such as 365d (the prune itself is
    /// written to the trail).
    PruneAudit {
        /// How old a change must be to go, such as 365d or 52weeks.
        #[arg(long, value_parser = parse_duration)]
        older_than: Duration,
    },
}

/// Limits as the command line gives them; none of them: no change.
#[derive(Args)]
struct LimitArgs {
    /// Requests per minute, smoothed (a burst of that many, then one at a time).
    #[arg(long, value_name = "N")]
    per_minute: Option<u32>,
    /// Requests per UTC day.
    #[arg(long, value_name = "N")]
    daily: Option<u32>,
    /// Requests per UTC month.
    #[arg(long, value_name = "N")]
    monthly: Option<u32>,
    /// A limit as name=limit/window, such as burst=10/1s or hour=2000/1h; repeatable.
    #[arg(long = "limit", value_parser = parse_limit)]
    named: Vec<NamedLimit>,
}

impl LimitArgs {
    /// The limits given, or `None` when none is.
    fn limits(&self) -> Option<Limits> {
        let mut limits = named_limits(&self.named);
        limits.per_minute = self.per_minute;
        limits.daily = self.daily;
        limits.monthly = self.monthly;
        (!limits.is_unlimited()).then_some(limits)
    }
}

#[derive(Args)]
struct KeySpec {
    /// A descriptive name, such as production-server (default: key-<unix time>).
    #[arg(long)]
    name: Option<String>,
    /// Scopes, comma-separated: read,write,admin,offers:write…
    #[arg(long, value_delimiter = ',')]
    scopes: Vec<String>,
    /// live, test or dev.
    #[arg(long, default_value = "live", value_parser = parse_environment)]
    env: Environment,
    /// Expire after this long, such as 90d or 12h.
    #[arg(long, value_parser = parse_duration)]
    expires_in: Option<Duration>,
    /// A plan: free, pro, enterprise, or one the service defines.
    #[arg(long)]
    plan: Option<String>,
    /// Who the key belongs to.
    #[arg(long)]
    owner: Option<String>,
    /// A limit of the key's own, as name=limit/window (burst=10/1s, hour=2000/1h); repeatable.
    /// The key's own limits replace its plan's, so this and --plan exclude each other.
    #[arg(long = "limit", value_parser = parse_limit, conflicts_with = "plan")]
    limit: Vec<NamedLimit>,
    /// A budget of N credits, each request spending its cost (default: none, not metered).
    #[arg(long, value_name = "N")]
    credits: Option<u64>,
    /// Refill the credits to N: daily, monthly (on the 1st) or monthly:D (D from 1 to 28).
    #[arg(long, value_parser = parse_refill, requires = "credits")]
    refill: Option<RefillPeriod>,
    /// Metadata as key=value, such as team=growth; repeatable.
    #[arg(long, value_parser = parse_entry)]
    metadata: Vec<(String, String)>,
    /// Networks the key may be used from, comma-separated CIDRs or addresses (default: anywhere).
    #[arg(long = "allow-ip", value_delimiter = ',', value_parser = parse_network)]
    allow_ip: Vec<IpNet>,
    /// The variable name in the `export` line (default: <PREFIX>_API_KEY).
    #[arg(long)]
    var: Option<String>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("{e}: write a duration such as 90d, 24h or 30m"))
}

fn parse_entry(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!(
            "`{text}` is not an entry: write key=value, such as team=growth"
        )),
    }
}

fn parse_refill(text: &str) -> Result<RefillPeriod, String> {
    RefillPeriod::from_text(text)
        .map_err(|e| format!("{e}: write daily, monthly or monthly:D with D from 1 to 28"))
}

/// `amount` credits, refilled every `refill` if given.
fn credits(amount: u64, refill: Option<RefillPeriod>) -> Result<Credits, Failure> {
    match refill {
        None => Ok(Credits::once(amount)),
        Some(every) => Credits::refilled(amount, every).map_err(|e| invalid(e.to_string())),
    }
}

fn parse_limit(text: &str) -> Result<NamedLimit, String> {
    text.parse().map_err(|e: InvalidLimit| e.to_string())
}

fn parse_network(text: &str) -> Result<IpNet, String> {
    network::parse_network(text).map_err(|_| {
        format!("`{text}` is not a network: write a CIDR such as 203.0.113.0/24 or an address")
    })
}

/// Which keys `list` prints: every filter given must hold.
#[derive(Args)]
struct ListFilter {
    /// Only this owner's keys.
    #[arg(long)]
    owner: Option<String>,
    /// Only keys of this environment: live, test or dev.
    #[arg(long, value_parser = parse_environment)]
    env: Option<Environment>,
    /// Only keys in this state: active, disabled, revoked or expired.
    #[arg(long, value_parser = parse_state)]
    state: Option<KeyState>,
    /// Only keys whose name contains this, whatever the case.
    #[arg(long)]
    name: Option<String>,
    /// Only keys created longer ago than this (90d): keys due for rotation.
    #[arg(long, value_parser = parse_duration)]
    older_than: Option<Duration>,
    /// Only keys with no request for this long (30d), or never used: keys to delete. Last use
    /// is what the service's `StoreUsage` sink wrote to the store.
    #[arg(long, value_parser = parse_duration)]
    unused_for: Option<Duration>,
    /// Only keys not expired yet that expire within this long (7d): keys whose holders need a
    /// successor soon.
    #[arg(long, value_parser = parse_duration)]
    expires_within: Option<Duration>,
}

impl ListFilter {
    /// The filter, with durations counted back from `now` (to 1970 at most), or on from it.
    fn to_filter(&self, now: SystemTime) -> KeyFilter {
        let mut filter = KeyFilter::new();
        filter.owner.clone_from(&self.owner);
        filter.environment = self.env;
        filter.state = self.state;
        filter.name.clone_from(&self.name);
        // Each duration given narrows the filter, counted from now.
        let bounds: [(_, fn(_, _, _) -> _); 3] = [
            (self.older_than, KeyFilter::created_longer_ago),
            (self.unused_for, KeyFilter::unused_for),
            (self.expires_within, KeyFilter::expiring_within),
        ];
        for (by, narrow) in bounds {
            if let Some(by) = by {
                filter = narrow(filter, now, by);
            }
        }
        filter
    }
}

/// Whether any key in the store has a recorded last use: if none has, most likely nothing
/// records it (the service's layer has no `StoreUsage`), and `--unused-for` lists every key.
async fn any_use_recorded(
    keys: &KeyManager<AnyStore>,
    now: SystemTime,
) -> Result<bool, StoreError> {
    use tower_api_key::store::KeyStoreAdmin as _;
    let never_used = KeyFilter::new().unused_since(SystemTime::UNIX_EPOCH);
    let store = keys.store();
    let never = store.list_page(&never_used, now, 0, 0).await?.total;
    let all = store.list_page(&KeyFilter::new(), now, 0, 0).await?.total;
    Ok(never < all)
}

fn parse_state(text: &str) -> Result<KeyState, String> {
    match text {
        "active" => Ok(KeyState::Active),
        "disabled" => Ok(KeyState::Disabled),
        "revoked" => Ok(KeyState::Revoked),
        "expired" => Ok(KeyState::Expired),
        _ => Err(format!(
            "`{text}` is not a state: write active, disabled, revoked or expired"
        )),
    }
}

fn parse_environment(text: &str) -> Result<Environment, String> {
    text.parse().map_err(|e| format!("{e}"))
}

fn parse_resolution(text: &str) -> Result<Resolution, String> {
    match text {
        "minute" => Ok(Resolution::Minute),
        "hour" => Ok(Resolution::Hour),
        "day" => Ok(Resolution::Day),
        _ => Err("expected `minute`, `hour` or `day`".to_owned()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {}", Shown(&failure.message));
            for detail in &failure.details {
                eprintln!("  {}", Shown(detail));
            }
            ExitCode::from(failure.code)
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let mut format = KeyFormat::new(&cli.prefix).map_err(|e| invalid(e.to_string()))?;
    if let Some(hex) = &cli.id_key {
        let id_key = IdKey::from_hex(hex).map_err(|e| invalid(format!("--id-key: {e}")))?;
        format = format.with_id_key(id_key);
    }
    let default_var = format!("{}_API_KEY", cli.prefix.to_uppercase());
    // Keys in `store`, issued in `format`, within `--max-lifetime` and `--max-per-owner`.
    let manager = |store: AnyStore| {
        let mut keys = KeyManager::new(store).format(format.clone());
        if let Some(max) = cli.max_lifetime {
            keys = keys.max_key_lifetime(max);
        }
        if let Some(max) = cli.max_per_owner {
            keys = keys.max_keys_per_owner(max);
        }
        keys
    };
    if let Command::Generate(spec) = &cli.command {
        // Issued as `create` would, without a store of ours.
        let created = manager(AnyStore::Memory(MemoryStore::new()))
            .create(new_key(spec)?)
            .await?;
        let var = spec.var.as_deref().unwrap_or(&default_var);
        if cli.json {
            let out = json!({ "key": created.key.expose_secret(), "record": created.record });
            println!("{out}");
        } else {
            show_created(&created, var, "Generated");
            println!("The record to store (only the digest of the secret):");
            println!(
                "{}",
                serde_json::to_string_pretty(&created.record).expect("JSON")
            );
        }
        return Ok(());
    }

    let actor = actor(cli.actor.as_deref())?;
    let store = connect(&cli).await?;
    let keys = manager(store);
    let trail = Trail {
        keys: &keys,
        actor: &actor,
    };
    match cli.command {
        Command::Generate(_) => unreachable!("handled above"),
        Command::Export { filter, audit } => {
            transfer::export(&keys, &filter.to_filter(SystemTime::now()), audit).await?
        }
        Command::Import { file, dry_run } => {
            let dry = manager(AnyStore::Memory(MemoryStore::new()));
            transfer::import(&trail, &dry, &format, &file, cli.json, dry_run).await?;
        }
        Command::Create(spec) => {
            let created = keys.create(new_key(&spec)?).await?;
            let record = &created.record;
            let event = trail.event("create", &record.id, record.owner.as_deref());
            trail.record(event).await;
            let var = spec.var.as_deref().unwrap_or(&default_var);
            print_created(&keys, &created, var, cli.json, "Created").await?;
        }
        Command::PruneAudit { older_than } => {
            let before = SystemTime::now()
                .checked_sub(older_than)
                .and_then(|at| at.duration_since(SystemTime::UNIX_EPOCH).ok())
                .ok_or_else(|| invalid("--older-than reaches before 1970"))?;
            let micros = u64::try_from(before.as_micros()).unwrap_or(u64::MAX);
            let removed = keys.store().prune_audit(micros).await?;
            let older = humantime::format_duration(older_than).to_string();
            let detail = [format!("older than {older}"), format!("{removed} removed")];
            trail
                .record(trail.event("prune", "", None).detail(detail))
                .await;
            if cli.json {
                println!(
                    "{}",
                    json!({ "removed": removed, "before": before.as_secs() })
                );
            } else {
                let before = time(Some(before.as_secs()));
                println!(
                    "Removed {removed} changes from the audit trail, every one before {before}."
                );
            }
        }
        Command::Audit { key, owner, limit } => {
            let limit = usize::try_from(limit).unwrap_or(usize::MAX);
            let mut query = AuditQuery::newest(limit);
            if let Some(key) = &key {
                query = query.key(key);
            }
            if let Some(owner) = &owner {
                query = query.owner(owner);
            }
            let events = keys.audit_trail(&query).await?;
            if cli.json {
                println!("{}", serde_json::to_string(&events).expect("JSON"));
            } else if events.is_empty() {
                println!("No changes.");
            } else {
                print_trail(&events);
            }
        }
        Command::Usage {
            key,
            owner,
            since,
            resolution,
        } => {
            let subject = match (&key, &owner) {
                (Some(key), _) => Subject::Key(key),
                (None, Some(owner)) => Subject::Owner(owner),
                (None, None) => Subject::All,
            };
            let now = SystemTime::now();
            let from = now.checked_sub(since).unwrap_or(SystemTime::UNIX_EPOCH);
            // No usage of its own: every replica's rows, as the console reads them.
            let report = Analytics::new()
                .usage_across(keys.store(), subject, from..now, resolution)
                .await?;
            // A deleted key's usage is still there to show; an id never issued is a mistake.
            if let Some(id) = key.as_deref().filter(|_| report.totals.requests == 0) {
                keys.show(id).await?.ok_or_else(|| not_found(id))?;
            }
            if cli.json {
                println!("{}", serde_json::to_string(&report).expect("JSON"));
            } else {
                print_usage(&report);
            }
        }
        Command::List(asked) => {
            let now = SystemTime::now();
            let filter = asked.to_filter(now);
            let all = keys.list_matching(&filter).await?;
            if asked.unused_for.is_some()
                && !all.is_empty()
                && !any_use_recorded(&keys, now).await?
            {
                eprintln!(
                    "warning: no key in this store has a recorded last use, so every key counts \
                     as unused, in use or not. Last use is written by the service's StoreUsage \
                     sink: without one, do not delete keys by this list."
                );
            }
            let filtered = filter != KeyFilter::new();
            if cli.json {
                println!("{}", serde_json::to_string(&all).expect("JSON"));
            } else if all.is_empty() && filtered {
                println!("No keys match.");
            } else if all.is_empty() {
                println!(
                    "No keys. Create one with: tower-api-key create --name NAME --scopes read"
                );
            } else {
                print_table(&all);
            }
        }
        Command::Show { id } => {
            let info = keys.show(&id).await?.ok_or_else(|| not_found(&id))?;
            print_info(&info, cli.json);
        }
        Command::Revoke { id } => {
            let event = trail.of_key("revoke", &id).await?;
            if !keys.revoke(&id).await? {
                return Err(not_found(&id));
            }
            trail.record(event).await;
            done(cli.json, &id, "revoked", "Revoked key");
        }
        Command::Disable { id } => set_disabled(&trail, &id, true, cli.json).await?,
        Command::Enable { id } => set_disabled(&trail, &id, false, cli.json).await?,
        Command::Delete { id } => {
            let event = trail.of_key("delete", &id).await?;
            if !keys.delete(&id).await? {
                return Err(not_found(&id));
            }
            trail.record(event).await;
            done(cli.json, &id, "deleted", "Deleted key");
        }
        Command::Update {
            id,
            name,
            scopes,
            no_scopes,
            plan,
            no_plan,
            expires_in,
            no_expiry,
            metadata,
            no_metadata,
        } => {
            let mut update = KeyUpdate::new();
            update.name = name;
            update.scopes = if no_scopes { Some(Vec::new()) } else { scopes };
            if let Some(plan) = plan {
                update.plan = Some(Some(plan_name(&plan)?));
            } else if no_plan {
                update.plan = Some(None);
            }
            if let Some(expires_in) = expires_in {
                update.expires_at = Some(Some(expiry(expires_in)?));
            } else if no_expiry {
                update.expires_at = Some(None);
            }
            if !metadata.is_empty() || no_metadata {
                update.metadata = Some(metadata.into_iter().collect());
            }
            if update.is_empty() {
                return Err(invalid(
                    "nothing to change: give --name, --scopes, --no-scopes, --plan, --no-plan, \
                     --expires-in, --no-expiry, --metadata or --no-metadata",
                ));
            }
            let event = trail.of_key("update", &id).await?;
            if !keys.update(&id, &update).await? {
                return Err(not_found(&id));
            }
            trail.record(event.detail(update.fields())).await;
            let info = keys.show(&id).await?.ok_or_else(|| not_found(&id))?;
            print_info(&info, cli.json);
        }
        Command::ApplyLifetime => {
            let Some((outliving, at)) = keys.outliving_lifetime().await? else {
                return Err(invalid(
                    "apply-lifetime needs the longest lifetime: give --max-lifetime, such as \
                     90d (or TOWER_API_KEY_MAX_LIFETIME)",
                ));
            };
            // Each change in the trail as it is made, should a later one fail.
            let mut changed = Vec::new();
            for record in outliving {
                if keys.set_expiry(&record.id, Some(at)).await? {
                    let event = trail.event("update", &record.id, record.owner.as_deref());
                    trail.record(event.detail(["expires_at"])).await;
                    changed.push(record);
                }
            }
            let at = unix_seconds(at);
            if cli.json {
                let ids: Vec<&str> = changed.iter().map(|r| r.id.as_str()).collect();
                println!("{}", json!({ "expires_at": at, "keys": ids }));
            } else if changed.is_empty() {
                println!("No key in circulation outlives the longest lifetime.");
            } else {
                println!("{} key(s) now expire at {}:", changed.len(), time(Some(at)));
                for record in &changed {
                    println!("  {}  {}", Shown(&record.id), Shown(&record.name));
                }
            }
        }
        Command::SetScopes { id, scopes } => {
            let event = trail.of_key("update", &id).await?.detail(["scopes"]);
            if !keys.update_scopes(&id, &scopes).await? {
                return Err(not_found(&id));
            }
            trail.record(event).await;
            let info = keys.show(&id).await?.ok_or_else(|| not_found(&id))?;
            print_info(&info, cli.json);
        }
        Command::Credits {
            id,
            set,
            refill,
            top_up,
            ..
        } => {
            let event = trail.of_key("update", &id).await?.detail(["credits"]);
            if let Some(amount) = set {
                if !keys
                    .set_credits(&id, Some(credits(amount, refill)?))
                    .await?
                {
                    return Err(not_found(&id));
                }
            }
            if let Some(amount) = top_up {
                if keys.top_up(&id, amount).await?.is_none() {
                    return Err(if keys.show(&id).await?.is_some() {
                        invalid(format!(
                            "key `{id}` has no credits: give it some with --set"
                        ))
                    } else {
                        not_found(&id)
                    });
                }
            }
            if set.is_none() && top_up.is_none() && !keys.set_credits(&id, None).await? {
                return Err(not_found(&id));
            }
            trail.record(event).await;
            let info = keys.show(&id).await?.ok_or_else(|| not_found(&id))?;
            print_info(&info, cli.json);
        }
        Command::SetLimits { id, limits, none } => {
            let limits = match (limits.limits(), none) {
                (Some(_), true) => return Err(invalid("--none clears the limits: give no others")),
                (None, false) => {
                    return Err(invalid(
                        "give limits (--per-minute, --daily, --monthly, --limit) or --none",
                    ))
                }
                (limits, _) => limits,
            };
            let event = trail.of_key("update", &id).await?.detail(["limits"]);
            if !keys.set_limits(&id, limits).await? {
                return Err(not_found(&id));
            }
            trail.record(event).await;
            let info = keys.show(&id).await?.ok_or_else(|| not_found(&id))?;
            print_info(&info, cli.json);
        }
        Command::Owner {
            owner,
            limits,
            no_limits,
            credits: budget,
            refill,
            top_up,
            no_credits,
        } => {
            if owner.trim().is_empty() {
                return Err(invalid("the owner's name is empty"));
            }
            let limits = match (limits.limits(), no_limits) {
                (Some(_), true) => {
                    return Err(invalid("--no-limits clears the limits: give no others"))
                }
                (Some(limits), false) => Some(Some(limits)),
                (None, true) => Some(None),
                (None, false) => None,
            };
            let budget = match (budget, no_credits) {
                (Some(amount), _) => Some(Some(credits(amount, refill)?)),
                (None, true) => Some(None),
                (None, false) => None,
            };
            let change = OwnerChange {
                limits,
                credits: budget,
                top_up,
            };
            // What was written is in the audit trail, even when a later step failed.
            let mut changed = Vec::new();
            let applied = change.apply(&keys, &owner, &mut changed).await;
            if !changed.is_empty() {
                let event = trail.event("owner", "", Some(&owner)).detail(changed);
                trail.record(event).await;
            }
            applied?;
            print_owner(&keys, &owner, cli.json).await?;
        }
        Command::SetNetworks { id, networks, .. } => {
            let event = trail
                .of_key("update", &id)
                .await?
                .detail(["allowed_networks"]);
            if !keys.set_allowed_networks(&id, &networks).await? {
                return Err(not_found(&id));
            }
            trail.record(event).await;
            let info = keys.show(&id).await?.ok_or_else(|| not_found(&id))?;
            print_info(&info, cli.json);
        }
        Command::Rotate { id, grace, var } => {
            let event = trail.of_key("rotate", &id).await?;
            let created = keys
                .rotate(&id, grace)
                .await?
                .ok_or_else(|| not_found(&id))?;
            let detail = [format!("new key {}", created.record.id)];
            trail.record(event.detail(detail)).await;
            let var = var.as_deref().unwrap_or(&default_var);
            print_created(&keys, &created, var, cli.json, "Rotated").await?;
            if !cli.json {
                println!(
                    "The old key {id} keeps working for {}, then answers API_KEY_EXPIRED.",
                    humantime::format_duration(grace)
                );
            }
        }
    }
    Ok(())
}

/// The store of `--database-url`, with its keys in `--table` or under `--redis-prefix`: a
/// table for Redis, a prefix for SQL, a bad table name or URL is the store's configuration
/// (exit 2).
async fn connect(cli: &Cli) -> Result<AnyStore, Failure> {
    let url = &cli.database_url;
    let store = match (&cli.table, &cli.redis_prefix) {
        (Some(table), _) => AnyStore::connect_with_table(url, table).await,
        (None, Some(prefix)) => AnyStore::connect_with_prefix(url, prefix).await,
        (None, None) => AnyStore::connect(url).await,
    };
    Ok(store?)
}

/// Who makes the changes: `--actor`, else `cli:$USER`, else `cli`.
fn actor(given: Option<&str>) -> Result<String, Failure> {
    let Some(actor) = given else {
        let user = ["USER", "LOGNAME", "USERNAME"]
            .into_iter()
            .filter_map(|name| std::env::var(name).ok())
            .find(|user| is_valid_name(user));
        return Ok(user.map_or_else(|| "cli".to_owned(), |user| format!("cli:{user}")));
    };
    if !is_valid_name(actor) {
        return Err(invalid(format!(
            "--actor: give a name of up to {MAX_NAME_LEN} characters, without control characters"
        )));
    }
    Ok(actor.to_owned())
}

/// What `owner` sets on an owner; `None`: no change.
struct OwnerChange {
    limits: Option<Option<Limits>>,
    credits: Option<Option<Credits>>,
    top_up: Option<u64>,
}

impl OwnerChange {
    /// Writes the change to `owner` step by step, naming each step written in `changed`.
    async fn apply(
        self,
        keys: &KeyManager<AnyStore>,
        owner: &str,
        changed: &mut Vec<&'static str>,
    ) -> Result<(), Failure> {
        if let Some(limits) = self.limits {
            keys.set_owner_limits(owner, limits).await?;
            changed.push("limits");
        }
        if let Some(credits) = self.credits {
            keys.set_owner_credits(owner, credits).await?;
            changed.push("credits");
        }
        if let Some(amount) = self.top_up {
            if keys.top_up_owner(owner, amount).await?.is_none() {
                return Err(invalid(format!(
                    "owner `{owner}` has no credits: give it some with --credits"
                )));
            }
            changed.push("top_up");
        }
        Ok(())
    }
}

/// Disables or enables key `id`, then shows it.
async fn set_disabled(
    trail: &Trail<'_>,
    id: &str,
    disabled: bool,
    json: bool,
) -> Result<(), Failure> {
    let keys = trail.keys;
    let field = if disabled { "disabled" } else { "enabled" };
    let event = trail.of_key("update", id).await?.detail([field]);
    if !keys.set_disabled(id, disabled).await? {
        return Err(not_found(id));
    }
    trail.record(event).await;
    let info = keys.show(id).await?.ok_or_else(|| not_found(id))?;
    print_info(&info, json);
    Ok(())
}

fn new_key(spec: &KeySpec) -> Result<NewKey, Failure> {
    let name = spec
        .name
        .clone()
        .unwrap_or_else(|| format!("key-{}", unix_seconds(SystemTime::now())));
    let mut key = NewKey::new(name)
        .environment(spec.env)
        .scopes(spec.scopes.iter().cloned());
    if let Some(expires_in) = spec.expires_in {
        key = key.expires_at(expiry(expires_in)?);
    }
    if let Some(plan) = &spec.plan {
        key = key.plan(plan_name(plan)?);
    }
    for (name, value) in &spec.metadata {
        key = key.metadata(name.clone(), value.clone());
    }
    if let Some(owner) = &spec.owner {
        key = key.owner(owner.clone());
    }
    if !spec.limit.is_empty() {
        key = key.limits(named_limits(&spec.limit));
    }
    if let Some(amount) = spec.credits {
        key = key.credits(credits(amount, spec.refill)?);
    }
    Ok(key.allowed_networks(spec.allow_ip.iter().copied()))
}

/// `expires_in` from now. Past the year 9999, the manager refuses it (exit code 2).
fn expiry(expires_in: Duration) -> Result<SystemTime, Failure> {
    SystemTime::now()
        .checked_add(expires_in)
        .ok_or_else(|| invalid("--expires-in is too long: keys expire by the year 9999"))
}

/// `plan`, if it is a plan's name: letters, digits, `-` and `_`.
fn plan_name(plan: &str) -> Result<String, Failure> {
    let valid = !plan.is_empty()
        && plan
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid {
        return Err(invalid(format!("invalid plan name `{plan}`")));
    }
    Ok(plan.to_owned())
}

/// Limits of `named` limits only (a later one of a name replaces an earlier one).
fn named_limits(named: &[NamedLimit]) -> Limits {
    named
        .iter()
        .cloned()
        .fold(Limits::UNLIMITED, |limits, limit| limits.with(limit))
}

/// A key's own limits as the tool shows them.
fn describe_limits(limits: Option<&Limits>) -> String {
    let Some(limits) = limits else {
        return "-".to_owned();
    };
    let mut parts = Vec::new();
    if let Some(n) = limits.per_minute {
        parts.push(format!("{n}/minute (burst {})", limits.burst.unwrap_or(n)));
    }
    if let Some(n) = limits.daily {
        parts.push(format!("{n}/day"));
    }
    if let Some(n) = limits.monthly {
        parts.push(format!("{n}/month"));
    }
    parts.extend(limits.named.iter().map(ToString::to_string));
    if limits.shared_by_owner {
        parts.push("shared by owner".to_owned());
    }
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join(", ")
    }
}

/// A key's or an owner's credits as the tool shows them.
fn describe_credits(credits: Option<&Credits>) -> String {
    match credits {
        None => "-".to_owned(),
        Some(credits) => match credits.refill {
            None => credits.remaining.to_string(),
            Some(refill) => format!(
                "{} (refilled to {} {})",
                credits.remaining,
                refill.amount,
                refill.every.to_text()
            ),
        },
    }
}

/// What is set on `owner`, and its keys.
async fn print_owner(keys: &KeyManager<AnyStore>, owner: &str, json: bool) -> Result<(), Failure> {
    let record = keys.owner(owner).await?;
    let limits = record.as_ref().and_then(|r| r.limits.as_ref());
    let credits = record.as_ref().and_then(|r| r.credits.as_ref());
    let ids: Vec<String> = keys
        .list()
        .await?
        .into_iter()
        .filter(|info| info.owner.as_deref() == Some(owner))
        .map(|info| info.id)
        .collect();
    if json {
        let out = json!({ "owner": owner, "limits": limits, "credits": credits, "keys": ids });
        println!("{out}");
        return Ok(());
    }
    println!("owner:       {}", Shown(owner));
    println!("limits:      {}", Shown(&describe_limits(limits)));
    println!("credits:     {}", Shown(&describe_credits(credits)));
    let listed = if ids.is_empty() {
        "none".to_owned()
    } else {
        ids.join(", ")
    };
    println!("keys:        {}", Shown(&listed));
    Ok(())
}

/// The one time a key is shown.
fn show_created(created: &CreatedKey, var: &str, verb: &str) {
    let record = &created.record;
    let scopes = if record.scopes.is_empty() {
        "none".to_owned()
    } else {
        record.scopes.join(", ")
    };
    println!(
        "{verb} key \"{}\" (id {}, {}, scopes: {})\n",
        Shown(&record.name),
        Shown(&record.id),
        record.environment,
        Shown(&scopes)
    );
    println!("    {}\n", created.key.expose_secret());
    println!(
        "This key is shown once and cannot be shown again. Keep it in an environment variable:\n"
    );
    println!("    export {var}={}\n", created.key.expose_secret());
    println!("Never commit it to version control or share it in chat or email.");
}

async fn print_created(
    keys: &KeyManager<AnyStore>,
    created: &CreatedKey,
    var: &str,
    json: bool,
    verb: &str,
) -> Result<(), Failure> {
    if json {
        let info = keys.show(&created.record.id).await?;
        let out = json!({ "key": created.key.expose_secret(), "info": info });
        println!("{out}");
    } else {
        show_created(created, var, verb);
    }
    Ok(())
}

fn done(json: bool, id: &str, state: &str, text: &str) {
    if json {
        println!("{}", json!({ "id": id, "result": state }));
    } else {
        println!("{text} {}", Shown(id));
    }
}

fn time(secs: Option<u64>) -> String {
    match secs {
        None => "-".to_owned(),
        // RFC 3339 has four-digit years; a record may hold a later time.
        Some(s) if s > tower_api_key::manage::MAX_UNIX_SECONDS => {
            format!("after 9999-12-31 (Unix time {s})")
        }
        Some(s) => {
            humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_secs(s))
                .to_string()
        }
    }
}

fn print_info(info: &KeyInfo, json: bool) {
    if json {
        println!("{}", serde_json::to_string(info).expect("JSON"));
        return;
    }
    println!("id:          {}", Shown(&info.id));
    println!("name:        {}", Shown(&info.name));
    println!("key:         {}", Shown(&info.prefix));
    println!("environment: {}", info.environment);
    println!("scopes:      {}", Shown(&info.scopes.join(", ")));
    println!(
        "owner:       {}",
        Shown(info.owner.as_deref().unwrap_or("-"))
    );
    println!(
        "plan:        {}",
        Shown(info.plan.as_deref().unwrap_or("-"))
    );
    let limits = describe_limits(info.limits.as_ref());
    println!("limits:      {}", Shown(&limits));
    println!(
        "credits:     {}",
        Shown(&describe_credits(info.credits.as_ref()))
    );
    let networks = if info.allowed_networks.is_empty() {
        "anywhere".to_owned()
    } else {
        info.allowed_networks.join(", ")
    };
    println!("networks:    {networks}");
    let metadata: Vec<String> = (info.metadata.iter())
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    if metadata.is_empty() {
        println!("metadata:    -");
    } else {
        println!("metadata:    {}", Shown(&metadata.join(", ")));
    }
    println!("state:       {}", info.state);
    println!("created:     {}", time(Some(info.created_at)));
    println!("last used:   {}", time(info.last_used_at));
    println!("expires:     {}", time(info.expires_at));
}

fn print_trail(events: &[AuditEvent]) {
    println!(
        "{:<20}  {:<7}  {:<12}  {:<16}  {:<20}  DETAIL",
        "WHEN", "ACTION", "KEY", "OWNER", "BY"
    );
    for event in events {
        let key = if event.key_id.is_empty() {
            "-"
        } else {
            &event.key_id
        };
        println!(
            "{:<20}  {:<7}  {:<12}  {:<16}  {:<20}  {}",
            time(Some(event.at)),
            Shown(&event.action),
            Shown(key),
            Shown(event.owner.as_deref().unwrap_or("-")),
            Shown(&event.actor),
            Shown(&event.detail.join(", "))
        );
    }
}

fn print_usage(report: &UsageReport) {
    let whose = match (report.subject, &report.id) {
        ("key", Some(id)) => format!("key {}", Shown(id)),
        ("owner", Some(owner)) => format!("owner {}", Shown(owner)),
        _ => "the whole service".to_owned(),
    };
    let by = match report.resolution {
        Resolution::Minute => "minute",
        Resolution::Hour => "hour",
        Resolution::Day => "day",
    };
    println!(
        "Usage of {whose}, {} to {}, by {by}:",
        time(Some(report.from)),
        time(Some(report.to))
    );
    let totals = &report.totals;
    println!(
        "Requests {}, errors {} ({:.1} %){}",
        totals.requests,
        totals.errors,
        totals.error_rate * 100.0,
        latency(totals)
    );
    /// `name count, …`, or `-` for none.
    fn named<'a>(counts: impl Iterator<Item = (&'a str, u64)>) -> String {
        let counts: Vec<String> = counts
            .map(|(name, n)| format!("{} {n}", Shown(name)))
            .collect();
        if counts.is_empty() {
            "-".to_owned()
        } else {
            counts.join(", ")
        }
    }
    let ranked = |ranked: &'_ [Ranked]| named(ranked.iter().map(|r| (r.name.as_str(), r.requests)));
    let outcomes = totals.outcomes.iter().map(|(name, n)| (*name, *n));
    println!("Outcomes: {}", named(outcomes));
    println!("Top endpoints: {}", ranked(&report.top_endpoints));
    println!("Top countries: {}", ranked(&report.top_countries));
    let used: Vec<_> = report.series.iter().filter(|p| p.requests > 0).collect();
    if used.is_empty() {
        return;
    }
    println!();
    println!(
        "{:<20}  {:>9}  {:>7}  LATENCY",
        "START", "REQUESTS", "ERRORS"
    );
    for point in used {
        println!(
            "{:<20}  {:>9}  {:>7}  {}",
            time(Some(point.start)),
            point.requests,
            point.errors,
            latency(point).trim_start_matches(", ")
        );
    }
}

/// `point`'s latency percentiles, after a comma, or nothing if none was measured.
fn latency(point: &Point) -> String {
    // Three significant digits, from microseconds to minutes.
    let ms = |ms: f64| {
        let decimals = match ms {
            ms if ms >= 100.0 => 0,
            ms if ms >= 10.0 => 1,
            ms if ms >= 1.0 => 2,
            _ => 3,
        };
        format!("{ms:.decimals$} ms")
    };
    match &point.latency {
        Some(l) => format!(
            ", p50 {}, p95 {}, p99 {}",
            ms(l.p50_ms),
            ms(l.p95_ms),
            ms(l.p99_ms)
        ),
        None => String::new(),
    }
}

fn print_table(all: &[KeyInfo]) {
    println!(
        "{:<12}  {:<24}  {:<4}  {:<8}  {:<20}  {:<20}  {:<20}  SCOPES",
        "ID", "NAME", "ENV", "STATE", "CREATED", "LAST USED", "EXPIRES"
    );
    for info in all {
        println!(
            "{:<12}  {:<24}  {:<4}  {:<8}  {:<20}  {:<20}  {:<20}  {}",
            Shown(&info.id),
            Shown(&info.name),
            info.environment,
            info.state,
            time(Some(info.created_at)),
            time(info.last_used_at),
            time(info.expires_at),
            Shown(&info.scopes.join(","))
        );
    }
}
