//! Request methods, counters, and fault rules (with their text form, used by the binary's
//! `--fault` flag and control endpoint).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The request methods the proxy counts separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    Put,
    Get,
    Head,
    Delete,
    Post,
    Other,
}

impl Method {
    pub const ALL: [Method; 6] = [
        Method::Put,
        Method::Get,
        Method::Head,
        Method::Delete,
        Method::Post,
        Method::Other,
    ];

    /// The method of a request line's first word (case-sensitive, as HTTP is).
    pub fn from_request(word: &str) -> Method {
        match word {
            "PUT" => Method::Put,
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "DELETE" => Method::Delete,
            "POST" => Method::Post,
            _ => Method::Other,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Method::Put => "PUT",
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Delete => "DELETE",
            Method::Post => "POST",
            Method::Other => "OTHER",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl FromStr for Method {
    type Err = String;

    fn from_str(s: &str) -> Result<Method, String> {
        let m = Method::from_request(&s.to_ascii_uppercase());
        if m == Method::Other && !s.eq_ignore_ascii_case("other") {
            return Err(format!(
                "unknown method {s:?}: expected PUT, GET, HEAD, DELETE, POST or OTHER"
            ));
        }
        Ok(m)
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Requests by method.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub put: u64,
    pub get: u64,
    pub head: u64,
    pub delete: u64,
    pub post: u64,
    pub other: u64,
}

impl Counts {
    pub(crate) fn from_array(a: [u64; 6]) -> Counts {
        Counts {
            put: a[0],
            get: a[1],
            head: a[2],
            delete: a[3],
            post: a[4],
            other: a[5],
        }
    }

    pub fn of(&self, m: Method) -> u64 {
        match m {
            Method::Put => self.put,
            Method::Get => self.get,
            Method::Head => self.head,
            Method::Delete => self.delete,
            Method::Post => self.post,
            Method::Other => self.other,
        }
    }

    pub fn total(&self) -> u64 {
        Method::ALL.iter().map(|m| self.of(*m)).sum()
    }

    /// `{"PUT":1,"GET":2,…,"total":3}`
    pub fn to_json(&self) -> String {
        let mut s = String::from("{");
        for m in Method::ALL {
            s.push_str(&format!("\"{}\":{},", m.name(), self.of(m)));
        }
        s.push_str(&format!("\"total\":{}}}", self.total()));
        s
    }
}

impl fmt::Display for Counts {
    /// `PUT 1 GET 2 HEAD 0 DELETE 0 POST 0 OTHER 0 total 3`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for m in Method::ALL {
            write!(f, "{} {} ", m.name(), self.of(m))?;
        }
        write!(f, "total {}", self.total())
    }
}

/// What the proxy does to a request a fault rule picks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FaultAction {
    /// `503 Slow Down` with an S3 `SlowDown` error body.
    SlowDown,
    /// `500 Internal Server Error` with an S3 `InternalError` error body.
    InternalError,
    /// Read the request, then reset the connection (RST) without a reply.
    Reset,
    /// Hold the request for this long (`None`: until the faults are cleared), then forward it.
    Stall(Option<Duration>),
}

/// A fault rule. Rules are consulted in the order they were added; the first that picks a
/// request decides what happens to it.
#[derive(Clone, Debug, PartialEq)]
pub struct Fault {
    pub action: FaultAction,
    /// Only requests with this method (any method if `None`).
    pub method: Option<Method>,
    /// Pick each matching request with this probability (1.0: every one).
    pub fraction: f64,
    /// Pick at most this many requests, then the rule is gone (`None`: until cleared).
    pub count: Option<u64>,
}

impl Fault {
    /// A rule that picks every request until the faults are cleared.
    pub fn new(action: FaultAction) -> Fault {
        Fault {
            action,
            method: None,
            fraction: 1.0,
            count: None,
        }
    }

    pub fn slow_down() -> Fault {
        Fault::new(FaultAction::SlowDown)
    }

    pub fn internal_error() -> Fault {
        Fault::new(FaultAction::InternalError)
    }

    pub fn reset() -> Fault {
        Fault::new(FaultAction::Reset)
    }

    /// Hold requests for `d` (`None`: until the faults are cleared).
    pub fn stall(d: Option<Duration>) -> Fault {
        Fault::new(FaultAction::Stall(d))
    }

    /// Only the next `n` picked requests.
    pub fn times(mut self, n: u64) -> Fault {
        self.count = Some(n);
        self
    }

    /// Pick matching requests with probability `p` (0 to 1).
    pub fn fraction(mut self, p: f64) -> Fault {
        self.fraction = p.clamp(0.0, 1.0);
        self
    }

    /// Only requests with method `m`.
    pub fn only(mut self, m: Method) -> Fault {
        self.method = Some(m);
        self
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.action {
            FaultAction::SlowDown => f.write_str("503")?,
            FaultAction::InternalError => f.write_str("500")?,
            FaultAction::Reset => f.write_str("reset")?,
            FaultAction::Stall(None) => f.write_str("stall")?,
            FaultAction::Stall(Some(d)) => write!(f, "stall={}", d.as_secs_f64())?,
        }
        if let Some(m) = self.method {
            write!(f, ",method={m}")?;
        }
        if self.fraction < 1.0 {
            write!(f, ",fraction={}", self.fraction)?;
        }
        if let Some(n) = self.count {
            write!(f, ",count={n}")?;
        }
        Ok(())
    }
}

impl FromStr for Fault {
    type Err = String;

    /// `ACTION[,method=M][,fraction=F][,count=N]`, ACTION one of `503` (or `slowdown`), `500`
    /// (or `internal`), `reset`, `stall` (until cleared) or `stall=SECS`.
    /// Examples: `503,count=5`, `reset,method=PUT,fraction=0.3`, `stall=10,count=1`.
    fn from_str(s: &str) -> Result<Fault, String> {
        let mut parts = s.trim().split(',').map(str::trim);
        let action = parts.next().unwrap_or("");
        let action = match action.to_ascii_lowercase().as_str() {
            "503" | "slowdown" => FaultAction::SlowDown,
            "500" | "internal" | "internalerror" => FaultAction::InternalError,
            "reset" => FaultAction::Reset,
            "stall" => FaultAction::Stall(None),
            a if a.starts_with("stall=") => {
                let secs: f64 = a["stall=".len()..]
                    .trim_end_matches('s')
                    .parse()
                    .map_err(|_| format!("invalid stall time in {action:?}: expected seconds"))?;
                if !(secs.is_finite() && secs >= 0.0) {
                    return Err(format!("invalid stall time in {action:?}"));
                }
                FaultAction::Stall(Some(Duration::from_secs_f64(secs)))
            }
            _ => {
                return Err(format!(
                    "unknown fault {action:?}: expected 503, 500, reset, stall or stall=SECS"
                ));
            }
        };
        let mut fault = Fault::new(action);
        for opt in parts.filter(|p| !p.is_empty()) {
            let (k, v) = opt
                .split_once('=')
                .ok_or_else(|| format!("invalid fault option {opt:?}: expected KEY=VALUE"))?;
            match k.to_ascii_lowercase().as_str() {
                "method" => fault.method = Some(v.parse()?),
                "fraction" | "p" => {
                    let p: f64 = v
                        .parse()
                        .map_err(|_| format!("invalid fraction {v:?}: expected 0 to 1"))?;
                    if !(0.0..=1.0).contains(&p) {
                        return Err(format!("invalid fraction {v:?}: expected 0 to 1"));
                    }
                    fault.fraction = p;
                }
                "count" | "n" => {
                    fault.count = Some(
                        v.parse()
                            .map_err(|_| format!("invalid count {v:?}: expected an integer"))?,
                    )
                }
                _ => {
                    return Err(format!(
                        "unknown fault option {k:?}: expected method, fraction or count"
                    ));
                }
            }
        }
        Ok(fault)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_specs_round_trip() {
        for spec in [
            "503",
            "500,method=PUT,count=3",
            "reset,fraction=0.25",
            "stall",
            "stall=2.5,method=GET,fraction=0.5,count=1",
        ] {
            let f: Fault = spec.parse().unwrap();
            assert_eq!(f.to_string(), spec);
            assert_eq!(f.to_string().parse::<Fault>().unwrap(), f);
        }
        let f: Fault = "slowdown, method=put, count=2".parse().unwrap();
        assert_eq!(f, Fault::slow_down().only(Method::Put).times(2));
        let f: Fault = "stall=3s".parse().unwrap();
        assert_eq!(f.action, FaultAction::Stall(Some(Duration::from_secs(3))));
        for bad in [
            "",
            "404",
            "503,count=x",
            "503,fraction=2",
            "503,method=FETCH",
            "503,color=red",
            "stall=abc",
        ] {
            assert!(bad.parse::<Fault>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn counts_format() {
        let c = Counts::from_array([1, 2, 3, 4, 5, 6]);
        assert_eq!(c.total(), 21);
        assert_eq!(c.of(Method::Delete), 4);
        assert_eq!(
            c.to_json(),
            r#"{"PUT":1,"GET":2,"HEAD":3,"DELETE":4,"POST":5,"OTHER":6,"total":21}"#
        );
        assert_eq!(
            c.to_string(),
            "PUT 1 GET 2 HEAD 3 DELETE 4 POST 5 OTHER 6 total 21"
        );
    }
}
