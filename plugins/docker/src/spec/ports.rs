//! The `ports` of a Docker instance's config: `[ip:][host:]container[/proto]` entries,
//! ranges included, as `docker run -p` takes them.

use bollard::models::PortBinding;

use super::SpecError;

fn parse_port_number(s: &str, entry: &str) -> Result<u16, SpecError> {
    match s.parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(SpecError::Invalid {
            field: "ports",
            message: format!("{entry:?}: {s:?} is not a port number"),
        }),
    }
}

/// The most ports one `ports` entry may name with a range.
const MAX_RANGE: u32 = 1024;

/// Parses a port or a range (`8000-8010`) into its first port and length.
fn parse_port_range(s: &str, entry: &str) -> Result<(u16, u16), SpecError> {
    let Some((a, b)) = s.split_once('-') else {
        return Ok((parse_port_number(s, entry)?, 1));
    };
    let (a, b) = (parse_port_number(a, entry)?, parse_port_number(b, entry)?);
    if b < a || u32::from(b - a) >= MAX_RANGE {
        return Err(SpecError::Invalid {
            field: "ports",
            message: format!("{entry:?}: a range goes up, over at most {MAX_RANGE} ports"),
        });
    }
    Ok((a, b - a + 1))
}

/// Parses one `ports` entry, `[ip:][host:]container[/proto]`, ranges included
/// (`8000-8002:80-82` is three ports, as `docker run -p` takes it), into exposed keys
/// (`80/tcp`) with their bindings. As `docker run -p`, a port with no host port is
/// published on a free host port the engine picks (the instance's inspect shows which),
/// and one container port on a host range gets one port of that range.
pub fn parse_ports(entry: &str) -> Result<Vec<(String, Option<PortBinding>)>, SpecError> {
    let invalid = |message: String| SpecError::Invalid {
        field: "ports",
        message,
    };
    let (rest, proto) = match entry.rsplit_once('/') {
        Some((r, p)) => (r, p),
        None => (entry, "tcp"),
    };
    if !matches!(proto, "tcp" | "udp" | "sctp") {
        return Err(invalid(format!(
            "{entry:?}: protocol must be tcp, udp or sctp"
        )));
    }
    // An IPv6 host address is written in brackets: [::1]:8080:80.
    let (ip, rest) = if let Some(r) = rest.strip_prefix('[') {
        let (ip, r) = r
            .split_once("]:")
            .ok_or_else(|| invalid(format!("{entry:?}: unclosed IPv6 address")))?;
        (Some(ip.to_owned()), r)
    } else {
        (None, rest)
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let (ip, host, container) = match (ip, parts.as_slice()) {
        (None, [c]) => (None, None, *c),
        (None, [h, c]) => (None, Some(*h), *c),
        (None, [i, h, c]) => (Some((*i).to_owned()), Some(*h), *c),
        (Some(i), [h, c]) => (Some(i), Some(*h), *c),
        _ => {
            return Err(invalid(format!(
                "{entry:?} is not [ip:]host:container[/proto]"
            )))
        }
    };
    let (c_first, c_len) = parse_port_range(container, entry)?;
    if let Some(ip) = &ip {
        if ip.parse::<std::net::IpAddr>().is_err() {
            return Err(invalid(format!("{entry:?}: {ip:?} is not an IP address")));
        }
    }
    let host = match host {
        Some("") | None => None,
        Some(h) => Some(parse_port_range(h, entry)?),
    };
    if let Some((_, h_len)) = host {
        if h_len != c_len && c_len != 1 {
            return Err(invalid(format!(
                "{entry:?}: the host and container ranges differ in length"
            )));
        }
    }
    Ok((0..c_len)
        .map(|i| {
            let host_port = match host {
                None => String::new(),
                Some((h, h_len)) if c_len == 1 && h_len > 1 => format!("{h}-{}", h + h_len - 1),
                Some((h, _)) => (h + i).to_string(),
            };
            let binding = PortBinding {
                host_ip: ip.clone(),
                host_port: Some(host_port),
            };
            (format!("{}/{proto}", c_first + i), Some(binding))
        })
        .collect())
}

/// Parses a `ports` entry that names one port (see [`parse_ports`]).
pub fn parse_port(entry: &str) -> Result<(String, Option<PortBinding>), SpecError> {
    match parse_ports(entry)?.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(SpecError::Invalid {
            field: "ports",
            message: format!("{entry:?} names more than one port"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_parse_every_form() {
        let (k, b) = parse_port("8080:80").unwrap();
        assert_eq!(k, "80/tcp");
        assert_eq!(b.unwrap().host_port.as_deref(), Some("8080"));
        let (k, b) = parse_port("127.0.0.1:5353:53/udp").unwrap();
        assert_eq!(k, "53/udp");
        let b = b.unwrap();
        assert_eq!(b.host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(b.host_port.as_deref(), Some("5353"));
        let (k, b) = parse_port("9000").unwrap();
        assert_eq!(k, "9000/tcp");
        assert_eq!(
            b.unwrap().host_port.as_deref(),
            Some(""),
            "a free host port"
        );
        let (_, b) = parse_port("[::1]:8443:443").unwrap();
        assert_eq!(b.unwrap().host_ip.as_deref(), Some("::1"));
        let (_, b) = parse_port("127.0.0.1::80").unwrap();
        assert_eq!(b.unwrap().host_port.as_deref(), Some(""));
        // Ranges, as `docker run -p` takes them.
        let r = parse_ports("8000-8002:80-82/udp").unwrap();
        let got: Vec<(String, String)> = r
            .iter()
            .map(|(k, b)| (k.clone(), b.clone().unwrap().host_port.unwrap()))
            .collect();
        assert_eq!(
            got,
            [("80/udp", "8000"), ("81/udp", "8001"), ("82/udp", "8002")]
                .map(|(k, h)| (k.to_owned(), h.to_owned()))
        );
        let r = parse_ports("127.0.0.1:9000-9001:90-91").unwrap();
        let b = r[1].1.clone().unwrap();
        assert_eq!(
            (
                r[1].0.as_str(),
                b.host_ip.as_deref(),
                b.host_port.as_deref()
            ),
            ("91/tcp", Some("127.0.0.1"), Some("9001"))
        );
        let r = parse_ports("7000-7001").unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].1.clone().unwrap().host_port.as_deref(), Some(""));
        let r = parse_ports("8000-8010:80").unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(
            r[0].1.clone().unwrap().host_port.as_deref(),
            Some("8000-8010")
        );
        for bad in ["8000-8002:80-81", "90-80", "1-2000", "a-b:80"] {
            assert!(parse_ports(bad).is_err(), "{bad}");
        }
        for bad in [
            "http",
            "80:0",
            "1:2:3:4",
            "x:80",
            "80/icmp",
            "999.1.1.1:1:1",
            "70000:80",
        ] {
            assert!(parse_port(bad).is_err(), "{bad}");
        }
    }
}
