//! A minimal extended-query-protocol client that asks for *text* results.
//!
//! tokio-postgres always requests binary results; the slt suite compares PostgreSQL's text
//! output, so for the extended-protocol run we speak Parse/Bind/Describe/Execute/Sync
//! ourselves with all result columns in text format.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct TextClient {
    stream: TcpStream,
}

#[derive(Debug)]
pub enum Reply {
    Rows(Vec<Vec<Option<String>>>),
    Command(String),
}

#[derive(Debug)]
pub struct ServerError {
    pub code: String,
    pub message: String,
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}] {}", self.code, self.message)
    }
}

impl std::error::Error for ServerError {}

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

impl TextClient {
    pub async fn connect(port: u16) -> std::io::Result<TextClient> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        let mut c = TextClient { stream };
        let mut body = Vec::new();
        body.extend_from_slice(&196608i32.to_be_bytes());
        for (k, v) in [("user", "root"), ("database", "dev")] {
            cstr(&mut body, k);
            cstr(&mut body, v);
        }
        body.push(0);
        let mut startup = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        startup.extend_from_slice(&body);
        c.stream.write_all(&startup).await?;
        loop {
            let (tag, _) = c.read_msg().await?;
            if tag == b'Z' {
                return Ok(c);
            }
        }
    }

    async fn read_msg(&mut self) -> std::io::Result<(u8, Vec<u8>)> {
        let tag = self.stream.read_u8().await?;
        let len = self.stream.read_i32().await? as usize;
        let mut body = vec![0; len - 4];
        self.stream.read_exact(&mut body).await?;
        Ok((tag, body))
    }

    /// Runs one statement through Parse/Bind/Describe/Execute/Sync, text results.
    pub async fn run(&mut self, sql: &str) -> std::io::Result<Result<Reply, ServerError>> {
        let mut out = Vec::new();
        let mut parse = Vec::new();
        cstr(&mut parse, "");
        cstr(&mut parse, sql);
        parse.extend_from_slice(&0i16.to_be_bytes());
        out.extend(msg(b'P', &parse));
        let mut bind = Vec::new();
        cstr(&mut bind, "");
        cstr(&mut bind, "");
        bind.extend_from_slice(&0i16.to_be_bytes()); // parameter formats
        bind.extend_from_slice(&0i16.to_be_bytes()); // parameters
        bind.extend_from_slice(&1i16.to_be_bytes()); // one result format for all columns:
        bind.extend_from_slice(&0i16.to_be_bytes()); // text
        out.extend(msg(b'B', &bind));
        out.extend(msg(b'D', b"P\0"));
        let mut exec = Vec::new();
        cstr(&mut exec, "");
        exec.extend_from_slice(&0i32.to_be_bytes());
        out.extend(msg(b'E', &exec));
        out.extend(msg(b'S', b""));
        self.stream.write_all(&out).await?;

        let mut rows = Vec::new();
        let mut has_rows = false;
        let mut tag = String::new();
        let mut error = None;
        loop {
            let (t, body) = self.read_msg().await?;
            match t {
                b'T' => has_rows = true,
                b'D' => {
                    let n = i16::from_be_bytes([body[0], body[1]]) as usize;
                    let mut pos = 2;
                    let mut row = Vec::with_capacity(n);
                    for _ in 0..n {
                        let len = i32::from_be_bytes(body[pos..pos + 4].try_into().unwrap());
                        pos += 4;
                        if len < 0 {
                            row.push(None);
                        } else {
                            let s = String::from_utf8(body[pos..pos + len as usize].to_vec())
                                .expect("utf8 result");
                            pos += len as usize;
                            row.push(Some(s));
                        }
                    }
                    rows.push(row);
                }
                b'C' => tag = String::from_utf8_lossy(&body[..body.len() - 1]).into_owned(),
                b'E' => {
                    let mut code = String::new();
                    let mut message = String::new();
                    for field in body.split(|b| *b == 0) {
                        if let Some((&k, v)) = field.split_first() {
                            let v = String::from_utf8_lossy(v).into_owned();
                            match k {
                                b'C' => code = v,
                                b'M' => message = v,
                                _ => {}
                            }
                        }
                    }
                    error = Some(ServerError { code, message });
                }
                b'Z' => break,
                _ => {}
            }
        }
        Ok(match error {
            Some(e) => Err(e),
            None if has_rows => Ok(Reply::Rows(rows)),
            None => Ok(Reply::Command(tag)),
        })
    }
}
