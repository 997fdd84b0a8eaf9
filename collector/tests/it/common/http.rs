//! A raw HTTP/1.1 client for the tests (no HTTP client crate): one request
//! per connection (`Connection: close`), with a method, an optional bearer
//! token and an optional JSON body; the whole response is read (chunked
//! bodies decoded), or only its status for never-ending streams.

use std::net::SocketAddr;

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::TcpStream,
};

/// A response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// The body as JSON (`Null` when it is not JSON).
    pub json: serde_json::Value,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The JSON error's `code`, if the body is one.
    pub fn error_code(&self) -> Option<&str> {
        self.json["error"]["code"].as_str()
    }
}

/// Requests to one server, with or without a bearer token.
#[derive(Debug, Clone)]
pub struct Client {
    pub address: SocketAddr,
    pub token: Option<String>,
}

impl Client {
    pub fn new(address: SocketAddr) -> Client {
        Client {
            address,
            token: None,
        }
    }

    /// The same server with `token` as the bearer token (or none).
    pub fn with_token(&self, token: Option<&str>) -> Client {
        Client {
            address: self.address,
            token: token.map(str::to_owned),
        }
    }

    pub async fn get(&self, path: &str) -> Response {
        self.send("GET", path, None).await
    }

    /// `POST` with a JSON body, or none.
    pub async fn post(&self, path: &str, body: Option<&str>) -> Response {
        self.send("POST", path, body).await
    }

    pub async fn delete(&self, path: &str) -> Response {
        self.send("DELETE", path, None).await
    }

    fn head(&self, method: &str, path: &str, body: Option<&str>) -> String {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: tally\r\nConnection: close\r\n");
        if let Some(token) = &self.token {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        match body {
            Some(body) => head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            )),
            None if method != "GET" => head.push_str("Content-Length: 0\r\n"),
            None => {}
        }
        head.push_str("\r\n");
        head
    }

    /// Any request; the whole response.
    pub async fn send(&self, method: &str, path: &str, body: Option<&str>) -> Response {
        let mut stream = TcpStream::connect(self.address).await.expect("connect");
        let mut request = self.head(method, path, body).into_bytes();
        request.extend_from_slice(body.unwrap_or_default().as_bytes());
        stream.write_all(&request).await.expect("write");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read");
        parse(&raw)
    }

    /// Only the status of a request (for endpoints that stream forever).
    pub async fn status(&self, method: &str, path: &str) -> u16 {
        let mut stream = TcpStream::connect(self.address).await.expect("connect");
        let body = (method == "POST").then_some("{}");
        let mut request = self.head(method, path, body).into_bytes();
        request.extend_from_slice(body.unwrap_or_default().as_bytes());
        stream.write_all(&request).await.expect("write");
        let mut line = String::new();
        BufReader::new(stream)
            .read_line(&mut line)
            .await
            .expect("status line");
        status_of(&line)
    }
}

fn status_of(line: &str) -> u16 {
    line.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a status line: {line:?}"))
}

fn parse(raw: &[u8]) -> Response {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head and a body");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status = status_of(lines.next().unwrap_or_default());
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    if headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"))
    {
        body = dechunk(&body);
    }
    let body = String::from_utf8(body).expect("UTF-8 body");
    let json = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
    Response {
        status,
        headers,
        body,
        json,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("a chunk size line");
        let size = std::str::from_utf8(&data[..end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .expect("a chunk size");
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[end + 2..end + 2 + size]);
        data = &data[end + 2 + size + 2..];
    }
}
