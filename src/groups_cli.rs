//! `strand groups`: an operator's view of consumer groups, in the manner of Kafka's
//! `kafka-consumer-groups --list --state` and `--describe`, through the project's client.
//!
//! - `list` asks every broker of the cluster (from Metadata) for ListGroups: each broker
//!   answers for the groups it coordinates.
//! - `describe GROUP` finds the group's coordinator (FindCoordinator), asks it for the
//!   group (DescribeGroups: state, members and their assignments) and its committed
//!   offsets (OffsetFetch, every partition), then each partition's log end offset
//!   (ListOffsets, latest) from the partition's leader, and prints one row per
//!   partition that is committed or assigned: committed offset, log end offset, lag and
//!   the member it is assigned to. `--members` prints the members instead.
//!
//! A coordinator that is not available yet (the offsets topic just created, a
//! coordinator loading or moving) is asked again with a bounded backoff until
//! `--timeout-ms`; every request has its own timeout. What the brokers answer is
//! printed as is: an assignment that does not decode shows as `?`, never a panic.

use crate::client::{decode_consumer_assignment, response_error, BrokerAddress, Client};
use anyhow::{anyhow, bail, Context, Result};
use kafka_protocol::messages::MetadataResponse;
use kafka_protocol::ResponseError;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;
use tokio::time::Instant;

/// Longest a single request (connect included) may take.
const REQUEST_TIMEOUT_MS: u64 = 10_000;
/// Backoff between attempts at a coordinator that is not available: doubles from the
/// first to the last.
const FIRST_BACKOFF_MS: u64 = 100;
const MAX_BACKOFF_MS: u64 = 2_000;

#[derive(Debug, clap::Subcommand)]
pub enum GroupsCommand {
    /// Lists every consumer group of the cluster with its protocol type and state.
    List(ListArgs),
    /// Describes one group: for each partition it committed or is assigned, the
    /// committed offset, the log end offset, the lag and the member it is assigned to
    /// (with --members: each member and its assignment).
    Describe(DescribeArgs),
}

#[derive(Debug, clap::Args)]
pub struct ConnectArgs {
    /// Brokers to start from, HOST:PORT[,HOST:PORT...], tried in turn.
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub bootstrap: String,
    /// How long to keep retrying a coordinator, leader or broker that is not available
    /// (bounded backoff) before giving up.
    #[arg(long, default_value_t = 30_000)]
    pub timeout_ms: u64,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, clap::Args)]
pub struct DescribeArgs {
    /// The group id.
    pub group: String,
    /// Print the members with their assignments instead of the offsets.
    #[arg(long)]
    pub members: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

pub fn run(command: GroupsCommand) -> ExitCode {
    // One worker: requests go one at a time. (A multi-thread runtime, as the other
    // commands use: the simulation build has no current-thread one.)
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&anyhow!("cannot start the runtime: {e}")),
    };
    let outcome = runtime.block_on(async {
        match command {
            GroupsCommand::List(args) => list(&args).await,
            GroupsCommand::Describe(args) => describe(&args).await,
        }
    });
    match outcome {
        Ok(code) => code,
        Err(e) => fail(&e),
    }
}

fn fail(error: &anyhow::Error) -> ExitCode {
    eprintln!("strand groups: {error:#}");
    ExitCode::FAILURE
}

// ---------------------------------------------------------------------------------------
// What is shown (pure: built from the answers, formatted without I/O)

/// A member's assignment as shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assignment {
    /// Topic -> partitions (empty: none yet).
    Partitions(BTreeMap<String, BTreeSet<i32>>),
    /// Bytes that do not decode, or a group whose protocol type is not "consumer".
    Unreadable,
}

impl Assignment {
    /// Decodes a member's assignment bytes of a group of `protocol_type`. A group
    /// with no protocol type yet (empty) is read as a consumer group.
    pub fn decode(protocol_type: &str, bytes: &[u8]) -> Assignment {
        if !(protocol_type == "consumer" || protocol_type.is_empty()) {
            return if bytes.is_empty() {
                Assignment::Partitions(BTreeMap::new())
            } else {
                Assignment::Unreadable
            };
        }
        match decode_consumer_assignment(bytes) {
            Ok(topics) => {
                let mut partitions: BTreeMap<String, BTreeSet<i32>> = BTreeMap::new();
                for (topic, ps) in topics {
                    partitions.entry(topic).or_default().extend(ps);
                }
                Assignment::Partitions(partitions)
            }
            Err(_) => Assignment::Unreadable,
        }
    }

    fn partition_count(&self) -> Option<usize> {
        match self {
            Assignment::Partitions(topics) => Some(topics.values().map(BTreeSet::len).sum()),
            Assignment::Unreadable => None,
        }
    }

    /// `topic(0,1,2),other(3)`; `-` for none, `?` when unreadable.
    pub fn display(&self) -> String {
        match self {
            Assignment::Unreadable => "?".to_string(),
            Assignment::Partitions(topics) if topics.values().all(BTreeSet::is_empty) => {
                "-".to_string()
            }
            Assignment::Partitions(topics) => topics
                .iter()
                .filter(|(_, ps)| !ps.is_empty())
                .map(|(topic, ps)| {
                    let ps: Vec<String> = ps.iter().map(i32::to_string).collect();
                    format!("{topic}({})", ps.join(","))
                })
                .collect::<Vec<_>>()
                .join(","),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub host: String,
    pub assignment: Assignment,
}

/// Everything `describe` prints about one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupView {
    pub group_id: String,
    pub state: String,
    pub protocol_type: String,
    /// The assignor the group chose (DescribeGroups' protocol data).
    pub protocol: String,
    pub coordinator: BrokerAddress,
    /// Sorted by member id.
    pub members: Vec<MemberView>,
    /// Committed offset of each partition the coordinator returned (None: nothing).
    pub committed: BTreeMap<(String, i32), Option<i64>>,
    /// Log end offset of each partition whose leader answered.
    pub log_end: BTreeMap<(String, i32), i64>,
}

impl GroupView {
    /// Every partition that is committed or assigned.
    pub fn partitions(&self) -> BTreeSet<(String, i32)> {
        let mut all: BTreeSet<(String, i32)> = self.committed.keys().cloned().collect();
        for member in &self.members {
            if let Assignment::Partitions(topics) = &member.assignment {
                for (topic, ps) in topics {
                    all.extend(ps.iter().map(|p| (topic.clone(), *p)));
                }
            }
        }
        all
    }

    /// The member each partition is assigned to (the first, should two claim it).
    fn owners(&self) -> BTreeMap<(String, i32), &MemberView> {
        let mut owners = BTreeMap::new();
        for member in &self.members {
            if let Assignment::Partitions(topics) = &member.assignment {
                for (topic, ps) in topics {
                    for p in ps {
                        owners.entry((topic.clone(), *p)).or_insert(member);
                    }
                }
            }
        }
        owners
    }

    /// `Consumer group 'g': state Stable, 2 members, protocol consumer/range, coordinator 1 (host:port)`.
    pub fn header(&self) -> String {
        let protocol = match (self.protocol_type.as_str(), self.protocol.as_str()) {
            ("", "") => "-".to_string(),
            (t, "") => t.to_string(),
            (t, p) => format!("{t}/{p}"),
        };
        let members = match self.members.len() {
            1 => "1 member".to_string(),
            n => format!("{n} members"),
        };
        format!(
            "Consumer group '{}': state {}, {members}, protocol {protocol}, coordinator {} ({})",
            self.group_id, self.state, self.coordinator.node_id, self.coordinator
        )
    }

    /// The offsets table: a row per committed or assigned partition, then a row per
    /// member with no partitions (`?` in TOPIC when its assignment is unreadable).
    pub fn offsets_table(&self) -> String {
        let header = [
            "GROUP",
            "TOPIC",
            "PARTITION",
            "CURRENT-OFFSET",
            "LOG-END-OFFSET",
            "LAG",
            "CONSUMER-ID",
            "HOST",
            "CLIENT-ID",
        ];
        let owners = self.owners();
        let mut rows = Vec::new();
        for key in self.partitions() {
            let committed = self.committed.get(&key).copied().flatten();
            let log_end = self.log_end.get(&key).copied();
            let owner = owners.get(&key);
            rows.push(vec![
                self.group_id.clone(),
                key.0.clone(),
                key.1.to_string(),
                or_dash(committed),
                or_dash(log_end),
                or_dash(lag(committed, log_end)),
                owner.map_or_else(dash, |m| m.member_id.clone()),
                owner.map_or_else(dash, |m| m.host.clone()),
                owner.map_or_else(dash, |m| m.client_id.clone()),
            ]);
        }
        for member in &self.members {
            let topic = match member.assignment.partition_count() {
                Some(0) => "-",
                Some(_) => continue,
                None => "?",
            };
            rows.push(vec![
                self.group_id.clone(),
                topic.to_string(),
                dash(),
                dash(),
                dash(),
                dash(),
                member.member_id.clone(),
                member.host.clone(),
                member.client_id.clone(),
            ]);
        }
        format_table(&header, &rows)
    }

    /// The members table: each member with its assignment.
    pub fn members_table(&self) -> String {
        let header = [
            "GROUP",
            "CONSUMER-ID",
            "GROUP-INSTANCE-ID",
            "HOST",
            "CLIENT-ID",
            "#PARTITIONS",
            "ASSIGNMENT",
        ];
        let rows: Vec<Vec<String>> = self
            .members
            .iter()
            .map(|m| {
                vec![
                    self.group_id.clone(),
                    m.member_id.clone(),
                    m.group_instance_id.clone().unwrap_or_else(dash),
                    m.host.clone(),
                    m.client_id.clone(),
                    m.assignment
                        .partition_count()
                        .map_or_else(|| "?".to_string(), |n| n.to_string()),
                    m.assignment.display(),
                ]
            })
            .collect();
        format_table(&header, &rows)
    }
}

/// Kafka's lag: log end offset minus committed offset, unknown unless both are known.
/// Not clamped: a negative lag (a log truncated below the commit) is shown as it is.
pub fn lag(committed: Option<i64>, log_end: Option<i64>) -> Option<i64> {
    Some(log_end?.saturating_sub(committed?))
}

fn dash() -> String {
    "-".to_string()
}

fn or_dash(value: Option<i64>) -> String {
    value.map_or_else(dash, |v| v.to_string())
}

/// Columns left-aligned, two spaces apart, the last one unpadded. An empty cell is
/// shown as `-` so that every row splits into as many words as the header.
pub fn format_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let cell = |s: &str| -> String {
        if s.is_empty() {
            dash()
        } else {
            s.chars()
                .map(|c| {
                    if c.is_whitespace() || c.is_control() {
                        '_'
                    } else {
                        c
                    }
                })
                .collect()
        }
    };
    let lines: Vec<Vec<String>> = std::iter::once(header.iter().map(|h| h.to_string()).collect())
        .chain(rows.iter().map(|r| r.iter().map(|c| cell(c)).collect()))
        .collect();
    let columns = lines.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            lines
                .iter()
                .filter_map(|l| l.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for line in lines {
        let mut text = String::new();
        for (i, c) in line.iter().enumerate() {
            if i + 1 == line.len() {
                text.push_str(c);
            } else {
                let pad = widths[i].saturating_sub(c.chars().count()) + 2;
                text.push_str(c);
                text.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

/// The `list` table: group id, protocol type and state, by group id.
pub fn groups_table(groups: &BTreeMap<String, (String, String)>) -> String {
    let rows: Vec<Vec<String>> = groups
        .iter()
        .map(|(id, (protocol_type, state))| vec![id.clone(), protocol_type.clone(), state.clone()])
        .collect();
    format_table(&["GROUP", "PROTOCOL-TYPE", "STATE"], &rows)
}

// ---------------------------------------------------------------------------------------
// Talking to the cluster

/// `host:port` entries of a comma-separated list, blanks left out.
fn bootstrap_list(bootstrap: &str) -> Vec<String> {
    bootstrap
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

fn resolve(address: &str) -> Result<SocketAddr> {
    address
        .to_socket_addrs()
        .with_context(|| format!("address {address}"))?
        .next()
        .ok_or_else(|| anyhow!("address {address}: no IP address"))
}

fn broker_socket(broker: &BrokerAddress) -> Result<SocketAddr> {
    let port = u16::try_from(broker.port)
        .map_err(|_| anyhow!("broker {} has port {}", broker.node_id, broker.port))?;
    resolve(&format!("{}:{port}", broker.host))
}

/// A request (or connect) that took longer than [`REQUEST_TIMEOUT_MS`].
#[derive(Debug, thiserror::Error)]
#[error("{what}: no answer within {REQUEST_TIMEOUT_MS} ms")]
struct NoAnswer {
    what: String,
}

/// Runs one request (or connect) within [`REQUEST_TIMEOUT_MS`].
async fn timed<T>(what: &str, call: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    match tokio::time::timeout(Duration::from_millis(REQUEST_TIMEOUT_MS), call).await {
        Ok(outcome) => outcome,
        Err(_) => Err(NoAnswer {
            what: what.to_string(),
        }
        .into()),
    }
}

async fn connect(address: SocketAddr) -> Result<Client> {
    timed(&format!("connect {address}"), Client::connect(address)).await
}

/// A connection to the first bootstrap broker that accepts one.
async fn connect_bootstrap(bootstrap: &str) -> Result<Client> {
    let addresses = bootstrap_list(bootstrap);
    if addresses.is_empty() {
        bail!("no bootstrap broker given");
    }
    let mut errors = Vec::new();
    for address in &addresses {
        match resolve(address) {
            Ok(socket) => match connect(socket).await {
                Ok(client) => return Ok(client),
                Err(e) => errors.push(format!("{e:#}")),
            },
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    bail!("no bootstrap broker reachable: {}", errors.join("; "))
}

/// The brokers a Metadata answer names, by node id.
fn broker_addresses(metadata: &MetadataResponse) -> BTreeMap<i32, BrokerAddress> {
    metadata
        .brokers
        .iter()
        .map(|b| {
            let address = BrokerAddress {
                node_id: b.node_id.0,
                host: b.host.to_string(),
                port: b.port,
            };
            (address.node_id, address)
        })
        .collect()
}

/// Every broker of the cluster, by node id.
async fn brokers(client: &mut Client) -> Result<BTreeMap<i32, BrokerAddress>> {
    let metadata = timed("Metadata", client.metadata_without_creation(Some(&[]))).await?;
    Ok(broker_addresses(&metadata))
}

/// Errors worth asking again about after a pause: the coordinator is being created,
/// loaded or moved, a leader changed, or a broker did not answer (refused, reset,
/// timed out). Anything else (an answer that does not decode, say) is final.
fn is_transient(error: &anyhow::Error) -> bool {
    if let Some(e) = response_error(error) {
        // Not Kafka's whole "retriable" set: an unknown topic, say, is final here.
        return matches!(
            e,
            ResponseError::CoordinatorNotAvailable
                | ResponseError::CoordinatorLoadInProgress
                | ResponseError::NotCoordinator
                | ResponseError::NotLeaderOrFollower
                | ResponseError::LeaderNotAvailable
                | ResponseError::OffsetNotAvailable
                | ResponseError::RequestTimedOut
        );
    }
    error
        .chain()
        .any(|cause| cause.is::<std::io::Error>() || cause.is::<NoAnswer>())
}

/// Bounded backoff: runs `attempt` until it succeeds, fails for good, or `timeout_ms`
/// passed; the last error is returned.
async fn with_retries<T, F, Fut>(what: &str, timeout_ms: u64, mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    let mut backoff_ms = FIRST_BACKOFF_MS;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(e) if is_transient(&e) && Instant::now() < deadline => {
                let left = deadline.saturating_duration_since(Instant::now());
                tokio::time::sleep(Duration::from_millis(backoff_ms).min(left)).await;
                backoff_ms = (backoff_ms * 2).min(MAX_BACKOFF_MS);
            }
            Err(e) => {
                return Err(e.context(format!(
                    "{what}: gave up after {attempts} attempt(s) in {timeout_ms} ms"
                )))
            }
        }
    }
}

async fn list(args: &ListArgs) -> Result<ExitCode> {
    let timeout_ms = args.connect.timeout_ms;
    let brokers = with_retries("Metadata", timeout_ms, || async move {
        let mut client = connect_bootstrap(&args.connect.bootstrap).await?;
        brokers(&mut client).await
    })
    .await?;
    let mut groups: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut failures = Vec::new();
    for broker in brokers.values() {
        let answer = with_retries(
            &format!("ListGroups of broker {}", broker.node_id),
            timeout_ms,
            || async move {
                let mut client = connect(broker_socket(broker)?).await?;
                timed("ListGroups", client.list_groups()).await
            },
        )
        .await;
        match answer {
            Ok(listed) => {
                for g in listed {
                    let state = if g.group_state.is_empty() {
                        "-".to_string()
                    } else {
                        g.group_state.to_string()
                    };
                    groups.insert(g.group_id.to_string(), (g.protocol_type.to_string(), state));
                }
            }
            Err(e) => failures.push(format!("broker {} ({broker}): {e:#}", broker.node_id)),
        }
    }
    print!("{}", groups_table(&groups));
    if failures.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        for f in &failures {
            eprintln!("strand groups: no group list from {f}");
        }
        Ok(ExitCode::FAILURE)
    }
}

/// What the coordinator says of a group.
struct Coordinated {
    coordinator: BrokerAddress,
    group: kafka_protocol::messages::describe_groups_response::DescribedGroup,
    committed: BTreeMap<(String, i32), Option<i64>>,
}

/// FindCoordinator at a bootstrap broker, then DescribeGroups and OffsetFetch at the
/// coordinator; one attempt.
async fn ask_coordinator(bootstrap: &str, group_id: &str) -> Result<Coordinated> {
    let mut client = connect_bootstrap(bootstrap).await?;
    let coordinator = timed("FindCoordinator", client.find_coordinator(group_id)).await?;
    let mut at_coordinator = connect(broker_socket(&coordinator)?)
        .await
        .with_context(|| format!("coordinator {} ({coordinator})", coordinator.node_id))?;
    let group = timed("DescribeGroups", at_coordinator.describe_group(group_id)).await?;
    let fetched = timed("OffsetFetch", at_coordinator.offset_fetch(group_id, None)).await?;
    let mut committed = BTreeMap::new();
    for f in fetched {
        if let Some(e) = f.error {
            if is_transient(&anyhow!(e)) {
                return Err(anyhow!(e).context(format!("OffsetFetch {}-{}", f.topic, f.partition)));
            }
            eprintln!(
                "strand groups: committed offset of {}-{}: {e}",
                f.topic, f.partition
            );
        }
        committed.insert((f.topic, f.partition), f.committed_offset);
    }
    Ok(Coordinated {
        coordinator,
        group,
        committed,
    })
}

/// The log end offset (ListOffsets latest, from each partition's leader) of
/// `partitions`. Those whose leader is moving or does not answer are asked again (fresh
/// Metadata, bounded backoff) until `timeout_ms`; those that cannot have one (a deleted
/// topic) or never got one are left out and reported.
async fn log_end_offsets(
    bootstrap: &str,
    partitions: &BTreeSet<(String, i32)>,
    timeout_ms: u64,
) -> BTreeMap<(String, i32), i64> {
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    let mut found = BTreeMap::new();
    // Why a partition has none yet: (worth asking again, what happened).
    let mut failed: BTreeMap<(String, i32), (bool, String)> = BTreeMap::new();
    let mut backoff_ms = FIRST_BACKOFF_MS;
    loop {
        // Partitions not yet asked, or asked and worth asking again.
        let wanted: BTreeSet<&(String, i32)> = partitions
            .iter()
            .filter(|k| !found.contains_key(*k))
            .filter(|k| !matches!(failed.get(*k), Some((false, _))))
            .collect();
        if wanted.is_empty() {
            break;
        }
        if !failed.is_empty() {
            if Instant::now() >= deadline {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::time::sleep(Duration::from_millis(backoff_ms).min(left)).await;
            backoff_ms = (backoff_ms * 2).min(MAX_BACKOFF_MS);
        }
        let leaders = match partition_leaders(bootstrap, &wanted).await {
            Ok(leaders) => leaders,
            Err(e) => {
                let why = (is_transient(&e), format!("Metadata: {e:#}"));
                for key in &wanted {
                    failed.insert((*key).clone(), why.clone());
                }
                continue;
            }
        };
        let mut clients: BTreeMap<i32, Client> = BTreeMap::new();
        for key in wanted {
            let answer = match leaders.get(key) {
                Some(Ok(leader)) => log_end_offset(&mut clients, leader, key).await,
                Some(Err(e)) => Err(anyhow!(*e).context("Metadata")),
                None => Err(anyhow!("not in the Metadata answer")),
            };
            match answer {
                Ok(offset) => {
                    found.insert(key.clone(), offset);
                    failed.remove(key);
                }
                Err(e) => {
                    failed.insert(key.clone(), (is_transient(&e), format!("{e:#}")));
                }
            }
        }
    }
    for ((topic, partition), (_, why)) in &failed {
        eprintln!("strand groups: no log end offset for {topic}-{partition}: {why}");
    }
    found
}

/// One partition's log end offset from its leader, over a connection kept in `clients`
/// (dropped after a failure: it may be unusable after a timeout).
async fn log_end_offset(
    clients: &mut BTreeMap<i32, Client>,
    leader: &BrokerAddress,
    (topic, partition): &(String, i32),
) -> Result<i64> {
    use std::collections::btree_map::Entry;
    let client = match clients.entry(leader.node_id) {
        Entry::Occupied(open) => open.into_mut(),
        Entry::Vacant(slot) => slot.insert(connect(broker_socket(leader)?).await?),
    };
    let answer = timed("ListOffsets", client.list_offset(topic, *partition, -1)).await;
    if answer.is_err() {
        clients.remove(&leader.node_id);
    }
    answer
}

/// Each partition's leader, or why there is none, from one Metadata answer.
async fn partition_leaders(
    bootstrap: &str,
    partitions: &BTreeSet<&(String, i32)>,
) -> Result<BTreeMap<(String, i32), Result<BrokerAddress, ResponseError>>> {
    let topics: BTreeSet<&str> = partitions.iter().map(|(t, _)| t.as_str()).collect();
    let topics: Vec<&str> = topics.into_iter().collect();
    let mut client = connect_bootstrap(bootstrap).await?;
    let metadata = timed("Metadata", client.metadata_without_creation(Some(&topics))).await?;
    let brokers = broker_addresses(&metadata);
    let mut leaders = BTreeMap::new();
    for topic in &metadata.topics {
        let Some(name) = &topic.name else { continue };
        let name = name.to_string();
        if let Some(e) = ResponseError::try_from_code(topic.error_code) {
            for (t, p) in partitions.iter().map(|k| (&k.0, k.1)) {
                if *t == name {
                    leaders.insert((name.clone(), p), Err(e));
                }
            }
            continue;
        }
        for p in &topic.partitions {
            let leader = match ResponseError::try_from_code(p.error_code) {
                Some(e) => Err(e),
                None => brokers
                    .get(&p.leader_id.0)
                    .cloned()
                    .ok_or(ResponseError::LeaderNotAvailable),
            };
            leaders.insert((name.clone(), p.partition_index), leader);
        }
    }
    Ok(leaders)
}

fn member_view(
    protocol_type: &str,
    m: &kafka_protocol::messages::describe_groups_response::DescribedGroupMember,
) -> MemberView {
    MemberView {
        member_id: m.member_id.to_string(),
        group_instance_id: m.group_instance_id.as_ref().map(|s| s.to_string()),
        client_id: m.client_id.to_string(),
        host: m.client_host.to_string(),
        assignment: Assignment::decode(protocol_type, &m.member_assignment),
    }
}

async fn describe(args: &DescribeArgs) -> Result<ExitCode> {
    let bootstrap = args.connect.bootstrap.as_str();
    let group_id = args.group.as_str();
    if group_id.is_empty() {
        bail!("the group id is empty");
    }
    let coordinated = with_retries(
        &format!("coordinator of group '{group_id}'"),
        args.connect.timeout_ms,
        || ask_coordinator(bootstrap, group_id),
    )
    .await?;
    let group = &coordinated.group;
    let protocol_type = group.protocol_type.to_string();
    let mut members: Vec<MemberView> = group
        .members
        .iter()
        .map(|m| member_view(&protocol_type, m))
        .collect();
    members.sort_by(|a, b| a.member_id.cmp(&b.member_id));
    let mut view = GroupView {
        group_id: group_id.to_string(),
        state: group.group_state.to_string(),
        protocol_type,
        protocol: group.protocol_data.to_string(),
        coordinator: coordinated.coordinator,
        members,
        committed: coordinated.committed,
        log_end: BTreeMap::new(),
    };
    let nothing_committed = view.committed.values().all(Option::is_none);
    if view.state == "Dead" && view.members.is_empty() && nothing_committed {
        bail!("consumer group '{group_id}' does not exist");
    }
    if !args.members {
        let partitions = view.partitions();
        if !partitions.is_empty() {
            view.log_end = log_end_offsets(bootstrap, &partitions, args.connect.timeout_ms).await;
        }
    }
    println!("{}", view.header());
    println!();
    if args.members {
        print!("{}", view.members_table());
    } else {
        print!("{}", view.offsets_table());
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};
    use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition;
    use kafka_protocol::messages::{ConsumerProtocolAssignment, TopicName};
    use kafka_protocol::protocol::{Encodable, StrBytes};

    fn assignment_bytes(version: i16, topics: &[(&str, &[i32])]) -> Vec<u8> {
        let message = ConsumerProtocolAssignment::default().with_assigned_partitions(
            topics
                .iter()
                .map(|(t, ps)| {
                    TopicPartition::default()
                        .with_topic(TopicName(StrBytes::from_string(t.to_string())))
                        .with_partitions(ps.to_vec())
                })
                .collect(),
        );
        let mut buf = BytesMut::new();
        buf.put_i16(version);
        message.encode(&mut buf, version.min(3)).unwrap();
        buf.to_vec()
    }

    fn partitions(topics: &[(&str, &[i32])]) -> Assignment {
        Assignment::Partitions(
            topics
                .iter()
                .map(|(t, ps)| (t.to_string(), ps.iter().copied().collect()))
                .collect(),
        )
    }

    #[test]
    fn assignments_decode_at_every_version() {
        for version in 0..=3 {
            let bytes = assignment_bytes(version, &[("orders", &[2, 0]), ("audit", &[1])]);
            let decoded = Assignment::decode("consumer", &bytes);
            assert_eq!(
                decoded,
                partitions(&[("audit", &[1]), ("orders", &[0, 2])]),
                "version {version}"
            );
            assert_eq!(decoded.display(), "audit(1),orders(0,2)");
        }
    }

    #[test]
    fn a_newer_assignment_version_is_read_as_the_newest_known() {
        let mut bytes = assignment_bytes(7, &[("orders", &[4])]);
        // A field a later version would add, after the known ones.
        bytes.extend_from_slice(&[0, 0, 0, 1]);
        assert_eq!(
            Assignment::decode("consumer", &bytes),
            partitions(&[("orders", &[4])])
        );
    }

    #[test]
    fn no_assignment_yet_is_no_partitions() {
        let decoded = Assignment::decode("consumer", &[]);
        assert_eq!(decoded, partitions(&[]));
        assert_eq!(decoded.display(), "-");
        assert_eq!(decoded.partition_count(), Some(0));
    }

    #[test]
    fn garbled_assignments_are_unreadable_not_a_panic() {
        let whole = assignment_bytes(1, &[("orders", &[0, 1, 2])]);
        let mut garbled: Vec<Vec<u8>> = vec![
            vec![0],
            vec![0xff, 0xff, 0, 0, 0, 0],             // version -1
            vec![0, 0, 0x7f, 0xff, 0xff, 0xff],       // 2^31-1 topics, no bytes
            vec![0, 0, 0, 0, 0, 1, 0x7f, 0xff, b'a'], // a topic name longer than the bytes
            vec![0, 0, 0xff, 0xff, 0xff, 0xfe],       // a negative topic count
            // One topic "a" claiming 2^31-1 partitions.
            vec![
                0, 0, 0, 0, 0, 1, 0, 1, b'a', 0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0,
            ],
        ];
        // Every truncation of a good assignment.
        for cut in 1..whole.len() - 4 {
            garbled.push(whole[..cut].to_vec());
        }
        for bytes in garbled {
            let decoded = Assignment::decode("consumer", &bytes);
            assert_eq!(decoded, Assignment::Unreadable, "{bytes:?}");
            assert_eq!(decoded.display(), "?");
            assert_eq!(decoded.partition_count(), None);
        }
    }

    proptest::proptest! {
        /// Whatever a broker sends as an assignment, decoding it neither panics nor
        /// reserves more than the bytes could hold.
        #[test]
        fn any_assignment_bytes_decode_or_are_unreadable(
            version in -1i16..6,
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..48),
        ) {
            let mut bytes = version.to_be_bytes().to_vec();
            bytes.extend_from_slice(&body);
            let decoded = Assignment::decode("consumer", &bytes);
            let _ = decoded.display();
            if version < 0 {
                proptest::prop_assert_eq!(decoded, Assignment::Unreadable);
            }
        }
    }

    #[test]
    fn other_protocol_types_are_not_decoded() {
        let bytes = assignment_bytes(0, &[("orders", &[0])]);
        assert_eq!(
            Assignment::decode("connect", &bytes),
            Assignment::Unreadable
        );
        assert_eq!(Assignment::decode("connect", &[]), partitions(&[]));
        // A group that has offsets but never had members has no protocol type.
        assert_eq!(
            Assignment::decode("", &bytes),
            partitions(&[("orders", &[0])])
        );
    }

    #[test]
    fn lag_needs_both_offsets() {
        assert_eq!(lag(Some(5), Some(11)), Some(6));
        assert_eq!(lag(Some(11), Some(11)), Some(0));
        assert_eq!(lag(None, Some(11)), None);
        assert_eq!(lag(Some(5), None), None);
        assert_eq!(lag(None, None), None);
        // A log cut below the commit shows as negative, not hidden.
        assert_eq!(lag(Some(20), Some(11)), Some(-9));
        assert_eq!(lag(Some(i64::MIN), Some(i64::MAX)), Some(i64::MAX));
    }

    #[test]
    fn tables_align_columns_and_fill_empty_cells() {
        let table = format_table(
            &["A", "LONG-HEADER", "C"],
            &[
                vec!["xyz".into(), "".into(), "last cell".into()],
                vec!["p".into(), "q".into(), "".into()],
            ],
        );
        assert_eq!(
            table,
            "A    LONG-HEADER  C\n\
             xyz  -            last_cell\n\
             p    q            -\n"
        );
    }

    fn member(id: &str, assignment: Assignment) -> MemberView {
        MemberView {
            member_id: id.to_string(),
            group_instance_id: None,
            client_id: "rdkafka".to_string(),
            host: "/127.0.0.1".to_string(),
            assignment,
        }
    }

    fn view() -> GroupView {
        GroupView {
            group_id: "g".to_string(),
            state: "Stable".to_string(),
            protocol_type: "consumer".to_string(),
            protocol: "range".to_string(),
            coordinator: BrokerAddress {
                node_id: 2,
                host: "127.0.0.1".to_string(),
                port: 9093,
            },
            members: vec![
                member("m-1", partitions(&[("t", &[0, 1])])),
                member("m-2", partitions(&[("t", &[2])])),
                member("m-3", partitions(&[])),
                member("m-4", Assignment::Unreadable),
            ],
            committed: [
                (("old".to_string(), 0), Some(7)),
                (("t".to_string(), 0), Some(4)),
                (("t".to_string(), 2), None),
            ]
            .into_iter()
            .collect(),
            log_end: [(("t".to_string(), 0), 11), (("t".to_string(), 1), 6)]
                .into_iter()
                .collect(),
        }
    }

    #[test]
    fn the_offsets_table_has_a_row_per_committed_or_assigned_partition() {
        let v = view();
        assert_eq!(
            v.header(),
            "Consumer group 'g': state Stable, 4 members, protocol consumer/range, \
             coordinator 2 (127.0.0.1:9093)"
        );
        let rows: Vec<Vec<String>> = v
            .offsets_table()
            .lines()
            .map(|l| l.split_whitespace().map(str::to_string).collect())
            .collect();
        let expected = [
            "GROUP TOPIC PARTITION CURRENT-OFFSET LOG-END-OFFSET LAG CONSUMER-ID HOST CLIENT-ID",
            "g old 0 7 - - - - -",
            "g t 0 4 11 7 m-1 /127.0.0.1 rdkafka",
            "g t 1 - 6 - m-1 /127.0.0.1 rdkafka",
            "g t 2 - - - m-2 /127.0.0.1 rdkafka",
            "g - - - - - m-3 /127.0.0.1 rdkafka",
            "g ? - - - - m-4 /127.0.0.1 rdkafka",
        ];
        let expected: Vec<Vec<String>> = expected
            .iter()
            .map(|l| l.split_whitespace().map(str::to_string).collect())
            .collect();
        assert_eq!(rows, expected);
    }

    #[test]
    fn the_members_table_shows_each_assignment() {
        let rows: Vec<String> = view()
            .members_table()
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        assert_eq!(
            rows,
            [
                "GROUP CONSUMER-ID GROUP-INSTANCE-ID HOST CLIENT-ID #PARTITIONS ASSIGNMENT",
                "g m-1 - /127.0.0.1 rdkafka 2 t(0,1)",
                "g m-2 - /127.0.0.1 rdkafka 1 t(2)",
                "g m-3 - /127.0.0.1 rdkafka 0 -",
                "g m-4 - /127.0.0.1 rdkafka ? ?",
            ]
        );
    }

    #[test]
    fn the_groups_table_is_sorted_by_group_id() {
        let groups: BTreeMap<String, (String, String)> = [
            (
                "b".to_string(),
                ("consumer".to_string(), "Empty".to_string()),
            ),
            ("a".to_string(), ("".to_string(), "Stable".to_string())),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            groups_table(&groups),
            "GROUP  PROTOCOL-TYPE  STATE\n\
             a      -              Stable\n\
             b      consumer       Empty\n"
        );
    }

    #[test]
    fn only_unavailable_coordinators_and_silent_brokers_are_asked_again() {
        let transient = [
            anyhow!(ResponseError::CoordinatorNotAvailable),
            anyhow!(ResponseError::CoordinatorLoadInProgress),
            anyhow!(ResponseError::NotCoordinator).context("DescribeGroups"),
            anyhow!(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
                .context("connect 127.0.0.1:9092"),
            anyhow!(NoAnswer {
                what: "OffsetFetch".to_string()
            }),
        ];
        for e in &transient {
            assert!(is_transient(e), "{e:#}");
        }
        let last = [
            anyhow!(ResponseError::GroupAuthorizationFailed),
            anyhow!(ResponseError::InvalidGroupId),
            anyhow!(ResponseError::UnknownTopicOrPartition).context("Metadata"),
            anyhow!("correlation id 3 != 2"),
        ];
        for e in &last {
            assert!(!is_transient(e), "{e:#}");
        }
    }

    #[test]
    fn bootstrap_lists_split_on_commas() {
        assert_eq!(
            bootstrap_list(" 127.0.0.1:9092,,127.0.0.1:9093 "),
            ["127.0.0.1:9092", "127.0.0.1:9093"]
        );
        assert!(bootstrap_list(" , ").is_empty());
    }
}
