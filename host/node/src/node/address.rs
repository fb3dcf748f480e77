//! Node addresses as operators write them (`HOST:PORT` or `http://HOST:PORT`),
//! checked before anything is dialled or replicated.

/// The URL a peer address is dialled at, or why the address is unusable.
pub fn parse_peer_address(address: &str) -> Result<String, String> {
    let trimmed = address.trim();
    if trimmed.is_empty() {
        return Err("the address is empty; expected HOST:PORT".to_owned());
    }
    let (scheme, rest) = match trimmed.split_once("://") {
        Some((scheme @ ("http" | "https"), rest)) => (scheme, rest),
        Some((scheme, _)) => {
            return Err(format!("unsupported scheme `{scheme}`; use http or https"));
        }
        None => ("http", trimmed),
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') || rest.contains('?') || rest.contains('#') || rest.contains('@') {
        return Err(format!(
            "`{address}` has a path or credentials; expected HOST:PORT"
        ));
    }
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| format!("`{address}` has no port; expected HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("`{port}` is not a port number (1-65535)"))?;
    if port == 0 {
        return Err("port 0 cannot be dialled; give the node's real port".to_owned());
    }
    let bare_host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let valid_host = if host.starts_with('[') {
        bare_host.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|label| {
                !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            })
    };
    if !valid_host {
        return Err(format!("`{host}` is not a host name or IP address"));
    }
    Ok(format!("{scheme}://{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::parse_peer_address;

    #[test]
    fn addresses() {
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("127.0.0.1:7070", Ok("http://127.0.0.1:7070")),
            ("http://node-2.local:7071/", Ok("http://node-2.local:7071")),
            ("https://[::1]:443", Ok("https://[::1]:443")),
            ("", Err("empty")),
            ("127.0.0.1", Err("no port")),
            ("127.0.0.1:0", Err("port 0")),
            ("127.0.0.1:70000", Err("not a port")),
            ("ftp://host:21", Err("unsupported scheme")),
            ("host:80/path", Err("path")),
            ("bad host:80", Err("not a host")),
            ("[not-ipv6]:80", Err("not a host")),
        ];
        for (input, expected) in cases {
            match (parse_peer_address(input), expected) {
                (Ok(url), Ok(want)) => assert_eq!(&url, want, "{input}"),
                (Err(message), Err(fragment)) => {
                    assert!(message.contains(fragment), "{input}: {message}")
                }
                (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
            }
        }
    }
}
