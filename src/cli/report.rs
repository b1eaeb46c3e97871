//! `fcsup report`: the per-function bill, from ledger files, from nodes' front doors, or from
//! the local fcsup's ledger. Several sources are merged into one bill in which each record is
//! billed once (`fcsup::billing::report::merge`); `--by-node` splits it by node.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use fcsup::billing::report::{self, Merged};
use fcsup::billing::WindowRecord;
use hyper::{Method, Uri};

use super::admin::AdminArgs;

/// How long one node may take to answer with its ledger.
const NODE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(clap::Args)]
pub struct Args {
    /// Read this ledger file (JSON lines) instead of asking the local fcsup; repeat it to
    /// merge several nodes' ledgers into one bill.
    #[arg(long, value_name = "FILE")]
    ledger: Vec<PathBuf>,
    /// Ask the node whose front door is at URL (http://HOST:PORT) for its ledger, with the
    /// token of --admin-token-file (the node's own --admin-token-file); repeat it to merge
    /// several nodes.
    #[arg(long, value_name = "URL", requires = "admin_token_file")]
    node: Vec<String>,
    #[command(flatten)]
    admin: AdminArgs,
    /// Only records starting at or after this time (ms since the epoch).
    #[arg(long)]
    since: Option<u64>,
    /// Split the bill by node (the node named in each record, else its source).
    #[arg(long)]
    by_node: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: Args) -> Result<()> {
    let Args { ledger, node, admin, since, by_node, json } = args;
    let local = ledger.is_empty() && node.is_empty();
    let mut sources = Vec::new();
    for path in &ledger {
        let file = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        let text = std::io::BufReader::new(file).lines();
        let name = path.display().to_string();
        let records = parse(&name, text.map_while(Result::ok), since);
        sources.push((name, records));
    }
    for url in &node {
        let token_file = admin.admin_token_file.as_deref().context("--node needs --admin-token-file")?;
        let (name, body) = node_ledger(url, token_file, since).await?;
        let records = parse(&name, String::from_utf8_lossy(&body).lines().map(str::to_string), since);
        sources.push((name, records));
    }
    if local {
        let path = since.map_or_else(|| "/admin/ledger".to_string(), |s| format!("/admin/ledger?since={s}"));
        let r = admin.get(&path).await.context("(or pass --ledger FILE or --node URL)")?;
        let name = node_header(&r.headers).unwrap_or_else(|| "local".into());
        let records = parse(&name, String::from_utf8_lossy(&r.body).lines().map(str::to_string), since);
        sources.push((name, records));
    }
    let count = sources.len();
    let Merged { records, duplicates } = report::merge(sources);
    if count > 1 || duplicates > 0 {
        eprintln!(
            "merged {} record(s) from {count} source(s); {duplicates} held by more than one source (the same record id) billed once",
            records.len()
        );
    }
    let bills = if by_node { report::summarize_by_node(&records) } else { report::summarize(&records) };
    // Freeze hazards live in the running fcsup only (README, Freeze hazards).
    let hazards: Option<Vec<fcsup::hazards::FunctionHazards>> =
        if local && !json { admin.get("/admin/hazards").await.ok().and_then(|r| serde_json::from_slice(&r.body).ok()) } else { None };
    if json {
        // The JSON stays the bill alone; the hazards are `GET /admin/hazards`.
        println!("{}", serde_json::to_string_pretty(&bills)?);
    } else {
        print!("{}", report::table(&bills));
        if let Some(h) = &hazards {
            print!("{}", fcsup::hazards::table(h));
        }
    }
    Ok(())
}

/// The records in JSON `lines` from `source` starting at or after `since`; says how many
/// lines it could not read (a torn last line after a crash is one).
fn parse(source: &str, lines: impl Iterator<Item = String>, since: Option<u64>) -> Vec<WindowRecord> {
    let mut skipped = 0;
    let mut out = Vec::new();
    for line in lines {
        match serde_json::from_str::<WindowRecord>(&line) {
            Ok(r) if since.is_none_or(|s| r.start_ms >= s) => out.push(r),
            Ok(_) => {}
            Err(_) if line.trim().is_empty() => {}
            Err(_) => skipped += 1,
        }
    }
    if skipped > 0 {
        eprintln!("{source}: skipped {skipped} unreadable line(s)");
    }
    out
}

/// `GET /admin/ledger` from the node at `url` with the bearer token in `token_file`: the
/// node's name (its `X-Fcsup-Node` header, else the URL) and the body.
async fn node_ledger(url: &str, token_file: &Path, since: Option<u64>) -> Result<(String, Bytes)> {
    let addr = node_addr(url)?;
    let token = std::fs::read_to_string(token_file).with_context(|| format!("cannot read {}", token_file.display()))?;
    let auth = format!("Bearer {}", token.trim_end_matches(['\n', '\r']));
    let path = since.map_or_else(|| "/admin/ledger".to_string(), |s| format!("/admin/ledger?since={s}"));
    let r = tokio::time::timeout(NODE_TIMEOUT, fcsup::client::request(&addr, Method::GET, &path, &[("authorization", &auth)], Bytes::new()))
        .await
        .map_err(|_| anyhow::anyhow!("{url} did not answer within {} s", NODE_TIMEOUT.as_secs()))
        .and_then(|r| r.with_context(|| format!("cannot reach {url}")))
        .context("a bill without this node's ledger would be short")?;
    if !r.status.is_success() {
        bail!("{url} answered HTTP {} to GET /admin/ledger: {}", r.status.as_u16(), String::from_utf8_lossy(&r.body).trim());
    }
    Ok((node_header(&r.headers).unwrap_or_else(|| url.to_string()), r.body))
}

/// The node name a response names.
fn node_header(headers: &hyper::HeaderMap) -> Option<String> {
    headers.get("x-fcsup-node").and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty()).map(str::to_string)
}

/// `host:port` of a node's front door given as `http://HOST:PORT[/]` or `HOST:PORT`.
fn node_addr(url: &str) -> Result<String> {
    let uri: Uri = url.parse().with_context(|| format!("--node {url}: not a URL"))?;
    match uri.scheme_str() {
        None | Some("http") => {}
        Some(s) => bail!("--node {url}: {s}:// is not supported; fcsup's front door speaks http:// (put TLS on the network or a proxy)"),
    }
    let Some(auth) = uri.authority().filter(|a| !a.as_str().contains('@')) else { bail!("--node {url}: expected http://HOST:PORT") };
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        bail!("--node {url}: expected http://HOST:PORT, with no path");
    }
    Ok(format!("{}:{}", auth.host(), auth.port_u16().unwrap_or(80)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_urls() {
        assert_eq!(node_addr("http://10.0.0.2:9100").unwrap(), "10.0.0.2:9100");
        assert_eq!(node_addr("http://node-a:9100/").unwrap(), "node-a:9100");
        assert_eq!(node_addr("10.0.0.2:9100").unwrap(), "10.0.0.2:9100");
        assert_eq!(node_addr("http://[::1]:9100").unwrap(), "[::1]:9100");
        assert_eq!(node_addr("http://node-a").unwrap(), "node-a:80");
        for bad in ["https://a:1", "http://u:p@a:1", "http://a:1/admin", "http://a:1/?x=1", "not a url"] {
            assert!(node_addr(bad).is_err(), "{bad}");
        }
    }
}
