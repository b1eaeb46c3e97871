//! FC's client-address headers on HTTP-trigger requests, from the TCP peer: the function
//! sees who called it as it would behind FC's gateway (FC 3.0 FAQ "How do I obtain the
//! original IP address of a client when an HTTP trigger invokes a function": `X-Forwarded-For`,
//! with `X-Real-IP` and `X-Client-IP` alike; built-in runtimes get `requestContext.http.sourceIp`).

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

/// Appends the peer to `X-Forwarded-For` (as each proxy does, so the first address stays the
/// original client's) and sets `X-Real-IP` and `X-Client-IP` to it, replacing whatever the
/// client sent there.
pub fn set_headers<B>(req: &mut Request<B>) {
    let Some(Peer(ip)) = req.extensions().get::<Peer>().copied() else { return };
    let ip = ip.to_string();
    let headers = req.headers_mut();
    let before: Vec<String> = headers.get_all(&FORWARDED_FOR).iter().filter_map(|v| v.to_str().ok()).map(str::to_string).collect();
    let list = before.into_iter().chain(std::iter::once(ip.clone())).collect::<Vec<_>>().join(", ");
    let (Ok(list), Ok(ip)) = (HeaderValue::from_str(&list), HeaderValue::from_str(&ip)) else { return };
    headers.insert(FORWARDED_FOR, list);
    headers.insert(REAL_IP, ip.clone());
    headers.insert(CLIENT_IP, ip);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peer_is_appended_and_replaces_forged_values() {
        let mut req = Request::builder().header("x-forwarded-for", "1.2.3.4").header("x-real-ip", "6.6.6.6").body(()).unwrap();
        req.extensions_mut().insert(Peer("10.0.0.9".parse().unwrap()));
        set_headers(&mut req);
        assert_eq!(req.headers()["x-forwarded-for"], "1.2.3.4, 10.0.0.9");
        assert_eq!(req.headers()["x-real-ip"], "10.0.0.9");
        assert_eq!(req.headers()["x-client-ip"], "10.0.0.9");
        let mut plain = Request::builder().body(()).unwrap();
        plain.extensions_mut().insert(Peer("::1".parse().unwrap()));
        set_headers(&mut plain);
        assert_eq!(plain.headers()["x-forwarded-for"], "::1");
        let mut unix = Request::builder().header("x-real-ip", "6.6.6.6").body(()).unwrap();
        set_headers(&mut unix);
        assert_eq!(unix.headers()["x-real-ip"], "6.6.6.6", "no peer: left as sent");
    }
}
