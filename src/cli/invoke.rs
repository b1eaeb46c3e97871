//! `fcsup invoke NAME`: one InvokeFunction on a running `fcsup serve`, over TCP.

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use hyper::Method;

#[derive(clap::Args)]
pub struct Args {
    /// Function name.
    name: String,
    /// Payload: text, @file, or - for standard input.
    #[arg(short, long, default_value = "")]
    data: String,
    /// Print the request's log (x-fc-log-type: Tail).
    #[arg(long)]
    tail: bool,
    /// Address of the running fcsup.
    #[arg(long, default_value = "127.0.0.1:9100")]
    url: String,
}

pub async fn run(args: Args) -> Result<()> {
    let Args { name, data, tail, url } = args;
    let body = match data.as_str() {
        "-" => {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut v)?;
            v
        }
        d if d.starts_with('@') => std::fs::read(&d[1..]).with_context(|| format!("cannot read {}", &d[1..]))?,
        d => d.as_bytes().to_vec(),
    };
    let headers: &[(&str, &str)] = if tail { &[("x-fc-log-type", "Tail")] } else { &[] };
    let path = format!("/2023-03-30/functions/{name}/invocations");
    let r = fcsup::client::request(&url, Method::POST, &path, headers, Bytes::from(body))
        .await
        .with_context(|| format!("cannot reach fcsup at {url}"))?;
    if tail {
        use base64::Engine;
        let log = base64::engine::general_purpose::STANDARD.decode(r.header("x-fc-log-result")).unwrap_or_default();
        eprint!("{}", String::from_utf8_lossy(&log));
    }
    println!("{}", String::from_utf8_lossy(&r.body));
    if !r.header("x-fc-error-type").is_empty() || !r.status.is_success() {
        bail!("invocation failed: HTTP {} {}", r.status.as_u16(), r.header("x-fc-error-type"));
    }
    Ok(())
}
