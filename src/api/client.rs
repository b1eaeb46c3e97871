//! FC's client-address headers on HTTP-trigger requests, from the TCP peer: the function
//! sees who called it as it would behind FC's gateway (FC 3.0 FAQ "How do I obtain the
//! original IP address of a client when an HTTP trigger invokes a function": `X-Forwarded-For`,
//! with `X-Real-IP` and `X-Client-IP` alike; built-in runtimes get `requestContext.http.sourceIp`).
//! Behind a front fcsup trusts (`--trusted-proxy`, e.g. the HAProxy of several nodes) the
//! client is the address that front appended to `X-Forwarded-For`, and its
//! `X-Forwarded-Proto` stands; from anyone else both are fcsup's own findings.

use std::net::IpAddr;

use hyper::header::{HeaderName, HeaderValue};
use hyper::Request;

/// The TCP peer of the connection a request came on (absent on the Unix admin socket).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub IpAddr);

const FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// Also what the built-in runtimes' event reads for `requestContext.http.sourceIp`.
const REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const CLIENT_IP: HeaderName = HeaderName::from_static("x-client-ip");
const FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// An address range (`10.0.0.0/8`, `::1`, `192.0.2.7/32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let (addr, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let net: IpAddr = addr.trim().parse().map_err(|_| format!("{s:?} is not an address or address/prefix"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            Some(b) => b.trim().parse::<u8>().ok().filter(|b| *b <= max).ok_or_else(|| format!("{s:?}: the prefix must be 0–{max}"))?,
            None => max,
        };
        Ok(Cidr { net: net.to_canonical(), bits })
    }
}

impl Cidr {
    /// Whether `ip` is in the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let bits = u32::from(self.bits);
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => bits == 0 || (u32::from(n) ^ u32::from(a)) >> (32 - bits) == 0,
            (IpAddr::V6(n), IpAddr::V6(a)) => bits == 0 || (u128::from(n) ^ u128::from(a)) >> (128 - bits) == 0,
            _ => false,
        }
    }
}

/// Appends the peer to `X-Forwarded-For` (as each proxy does, so the first address stays the
/// original client's) and sets `X-Real-IP` and `X-Client-IP` to the client, replacing whatever
/// the client sent there: the peer, or behind a `trusted` front the address it appended.
/// `X-Forwarded-Proto` is `http` (fcsup's front door), or what a trusted front said.
pub fn set_headers<B>(req: &mut Request<B>, trusted: &[Cidr]) {
    let Some(Peer(peer)) = req.extensions().get::<Peer>().copied() else { return };
    let headers = req.headers_mut();
    let before: Vec<String> = headers.get_all(&FORWARDED_FOR).iter().filter_map(|v| v.to_str().ok()).map(str::to_string).collect();
    let behind_front = trusted.iter().any(|c| c.contains(peer));
    let client = if behind_front {
        // The last entry is the one the front appended; earlier ones are the client's word.
        before.iter().flat_map(|v| v.split(',')).next_back().and_then(|a| a.trim().parse::<IpAddr>().ok()).unwrap_or(peer)
    } else {
        peer
    };
    let list = before.into_iter().chain(std::iter::once(peer.to_string())).collect::<Vec<_>>().join(", ");
    let (Ok(list), Ok(ip)) = (HeaderValue::from_str(&list), HeaderValue::from_str(&client.to_string())) else { return };
    headers.insert(FORWARDED_FOR, list);
    headers.insert(REAL_IP, ip.clone());
    headers.insert(CLIENT_IP, ip);
    let front_said = behind_front && {
        let mut protos = headers.get_all(&FORWARDED_PROTO).iter();
        matches!((protos.next().map(HeaderValue::as_bytes), protos.next()), (Some(b"http" | b"https"), None))
    };
    if !front_said {
        headers.insert(FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peer_is_appended_and_replaces_forged_values() {
        let mut req = Request::builder().header("x-forwarded-for", "1.2.3.4").header("x-real-ip", "6.6.6.6").body(()).unwrap();
        req.extensions_mut().insert(Peer("10.0.0.9".parse().unwrap()));
        req.headers_mut().insert("x-forwarded-proto", HeaderValue::from_static("https"));
        set_headers(&mut req, &[]);
        assert_eq!(req.headers()["x-forwarded-for"], "1.2.3.4, 10.0.0.9");
        assert_eq!(req.headers()["x-forwarded-proto"], "http", "a client's own word is not taken");
        assert_eq!(req.headers()["x-real-ip"], "10.0.0.9");
        assert_eq!(req.headers()["x-client-ip"], "10.0.0.9");
        let mut plain = Request::builder().body(()).unwrap();
        plain.extensions_mut().insert(Peer("::1".parse().unwrap()));
        set_headers(&mut plain, &[]);
        assert_eq!(plain.headers()["x-forwarded-for"], "::1");
        let mut unix = Request::builder().header("x-real-ip", "6.6.6.6").body(()).unwrap();
        set_headers(&mut unix, &[]);
        assert_eq!(unix.headers()["x-real-ip"], "6.6.6.6", "no peer: left as sent");
    }

    #[test]
    fn behind_a_trusted_front_the_client_is_what_it_appended() {
        let trusted: Vec<Cidr> = ["10.213.0.0/16".parse().unwrap()].into();
        let mut req = Request::builder()
            .header("x-forwarded-for", "6.6.6.6, 192.0.2.5")
            .header("x-forwarded-proto", "https")
            .header("x-real-ip", "6.6.6.6")
            .body(())
            .unwrap();
        req.extensions_mut().insert(Peer("10.213.0.1".parse().unwrap()));
        set_headers(&mut req, &trusted);
        assert_eq!(req.headers()["x-real-ip"], "192.0.2.5");
        assert_eq!(req.headers()["x-client-ip"], "192.0.2.5");
        assert_eq!(req.headers()["x-forwarded-for"], "6.6.6.6, 192.0.2.5, 10.213.0.1");
        assert_eq!(req.headers()["x-forwarded-proto"], "https");
        // The same headers from an untrusted peer: its own address, its own scheme.
        let mut forged = Request::builder().header("x-forwarded-for", "192.0.2.5").header("x-forwarded-proto", "https").body(()).unwrap();
        forged.extensions_mut().insert(Peer("10.214.0.1".parse().unwrap()));
        set_headers(&mut forged, &trusted);
        assert_eq!(forged.headers()["x-real-ip"], "10.214.0.1");
        assert_eq!(forged.headers()["x-forwarded-proto"], "http");
        // Behind the front, only one plain http/https value stands.
        let mut two = Request::builder().header("x-forwarded-proto", "https").header("x-forwarded-proto", "http").body(()).unwrap();
        two.extensions_mut().insert(Peer("10.213.0.1".parse().unwrap()));
        set_headers(&mut two, &trusted);
        assert_eq!(two.headers().get_all("x-forwarded-proto").iter().collect::<Vec<_>>(), ["http"]);
        let mut odd = Request::builder().header("x-forwarded-proto", "javascript").body(()).unwrap();
        odd.extensions_mut().insert(Peer("10.213.0.1".parse().unwrap()));
        set_headers(&mut odd, &trusted);
        assert_eq!(odd.headers()["x-forwarded-proto"], "http");
    }

    #[test]
    fn address_ranges_parse_and_match() {
        let c: Cidr = "192.0.2.0/24".parse().unwrap();
        assert!(c.contains("192.0.2.200".parse().unwrap()));
        assert!(!c.contains("192.0.3.1".parse().unwrap()));
        assert!(c.contains("::ffff:192.0.2.9".parse().unwrap()), "a v4-mapped peer");
        let one: Cidr = "::1".parse().unwrap();
        assert!(one.contains("::1".parse().unwrap()) && !one.contains("::2".parse().unwrap()));
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains("8.8.8.8".parse().unwrap()));
        for bad in ["10.0.0.0/33", "nonsense", "::/129", "10.0.0.0/x"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }
}
