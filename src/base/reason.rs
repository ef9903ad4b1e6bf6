//! The reason codes tandem gives every failure (Envoy's response flags) and the side of the pod
//! a request crossed: the words every layer uses to say what happened.

use std::fmt;

/// Which side of the pod a request crossed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// A reason code, as written to `x-tandem-error`, `response_flags` and the metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Upstream connection failure.
    UF,
    /// Upstream connection termination.
    UC,
    /// Upstream protocol error.
    UPE,
    /// Upstream request timeout.
    UT,
    /// Overflow: tandem's own limits.
    UO,
    /// No route (or denied by outbound policy).
    NR,
    /// Upstream retry limit exceeded.
    URX,
    /// Downstream protocol error.
    DPE,
    /// Downstream connection termination.
    DC,
    /// Local reset: tandem cut the request itself (the drain deadline passed, or a second stop
    /// signal came) by closing its connection.
    LR,
}

impl Reason {
    /// The code as text (`"UF"`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::UF => "UF",
            Reason::UC => "UC",
            Reason::UPE => "UPE",
            Reason::UT => "UT",
            Reason::UO => "UO",
            Reason::NR => "NR",
            Reason::URX => "URX",
            Reason::DPE => "DPE",
            Reason::DC => "DC",
            Reason::LR => "LR",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
