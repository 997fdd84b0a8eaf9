//! A minimal HTTP/1.0 client for the collector's JSON API on 127.0.0.1: one
//! connection per request, the admin token on every request (it reads
//! too), JSON in and out.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde_json::Value;

/// Longest a request may take.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Largest response read.
const MAX_RESPONSE: u64 = 16 * 1024 * 1024;

/// The collector's HTTP side.
pub struct Api {
    addr: SocketAddr,
    admin_token: String,
}

impl Api {
    pub fn new(port: u16, admin_token: String) -> Self {
        Self {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            admin_token,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// `GET path`: the status and the body (JSON, or `null` if it is not).
    pub fn get(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        self.request("GET", path, None)
    }

    /// `GET path`, which must answer 200.
    pub fn get_ok(&self, path: &str) -> anyhow::Result<Value> {
        let (status, body) = self.get(path)?;
        if status != 200 {
            bail!("GET {path} answered {status}: {body}");
        }
        Ok(body)
    }

    /// `POST path` with a JSON body.
    pub fn post(&self, path: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
        self.request("POST", path, Some(body))
    }

    /// `DELETE path`.
    pub fn delete(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        self.request("DELETE", path, None)
    }

    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let what = || format!("{method} http://{}{path}", self.addr);
        let mut stream = TcpStream::connect_timeout(&self.addr, TIMEOUT).with_context(what)?;
        stream.set_read_timeout(Some(TIMEOUT)).with_context(what)?;
        stream.set_write_timeout(Some(TIMEOUT)).with_context(what)?;
        let body = body.map(Value::to_string).unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.0\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            self.admin_token,
            body.len()
        );
        stream.write_all(request.as_bytes()).with_context(what)?;
        let mut response = Vec::new();
        stream
            .take(MAX_RESPONSE)
            .read_to_end(&mut response)
            .with_context(what)?;
        parse_response(&response).with_context(what)
    }
}

/// The status code and JSON body of an HTTP/1.x response.
fn parse_response(response: &[u8]) -> anyhow::Result<(u16, Value)> {
    let text = String::from_utf8_lossy(response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("the response has no end of headers")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .with_context(|| format!("no status in {:?}", head.lines().next()))?;
    let body = serde_json::from_str(body).unwrap_or(Value::Null);
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_parsed() {
        let (status, body) =
            parse_response(b"HTTP/1.1 201 Created\r\ncontent-length: 8\r\n\r\n{\"a\":1}")
                .expect("parse");
        assert_eq!(status, 201);
        assert_eq!(body["a"], 1);
        let (status, body) = parse_response(b"HTTP/1.0 204 No Content\r\n\r\n").expect("parse");
        assert_eq!((status, body), (204, Value::Null));
        assert!(parse_response(b"garbage").is_err());
    }
}
