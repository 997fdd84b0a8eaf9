//! Byte and packet counts of one interface: the kernel's
//! (`/sys/class/net/<name>/statistics`) and the agent's, and their
//! comparison.

use std::{fmt, fs, thread, time::Duration};

use anyhow::{Context as _, bail};

/// rx/tx bytes and packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
}

impl Counts {
    const FIELDS: [&'static str; 4] = ["rx_bytes", "tx_bytes", "rx_packets", "tx_packets"];

    fn values(self) -> [u64; 4] {
        [
            self.rx_bytes,
            self.tx_bytes,
            self.rx_packets,
            self.tx_packets,
        ]
    }

    fn from_values([rx_bytes, tx_bytes, rx_packets, tx_packets]: [u64; 4]) -> Self {
        Self {
            rx_bytes,
            tx_bytes,
            rx_packets,
            tx_packets,
        }
    }

    /// What grew since `earlier` (an error if anything shrank).
    pub fn since(self, earlier: Self) -> anyhow::Result<Self> {
        let mut grown = [0; 4];
        for (i, (now, then)) in self.values().into_iter().zip(earlier.values()).enumerate() {
            grown[i] = now
                .checked_sub(then)
                .with_context(|| format!("{} went down from {then} to {now}", Self::FIELDS[i]))?;
        }
        Ok(Self::from_values(grown))
    }

    /// The kernel's statistics of `iface`.
    pub fn of_kernel(iface: &str) -> anyhow::Result<Self> {
        let mut values = [0; 4];
        for (value, field) in values.iter_mut().zip(Self::FIELDS) {
            let path = format!("/sys/class/net/{iface}/statistics/{field}");
            let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
            *value = text
                .trim()
                .parse()
                .with_context(|| format!("{path} holds {text:?}"))?;
        }
        Ok(Self::from_values(values))
    }

    /// The kernel's statistics of `iface` once they stopped moving (the
    /// last acknowledgements of a transfer may still be under way).
    pub fn of_kernel_settled(iface: &str) -> anyhow::Result<Self> {
        let mut last = Self::of_kernel(iface)?;
        for _ in 0..50 {
            thread::sleep(Duration::from_millis(300));
            let now = Self::of_kernel(iface)?;
            if now == last {
                return Ok(now);
            }
            last = now;
        }
        bail!("the statistics of {iface} did not settle within 15 s")
    }

    /// One interface's counters in `tally-agent status --json`.
    pub fn of_status(status: &serde_json::Value, iface: &str) -> anyhow::Result<Self> {
        let entry = status["interfaces"]
            .as_array()
            .context("no interfaces in the status")?
            .iter()
            .find(|i| i["name"] == iface)
            .with_context(|| format!("{iface} is not in the status"))?;
        let mut values = [0; 4];
        for (value, field) in values.iter_mut().zip(Self::FIELDS) {
            *value = entry[field]
                .as_u64()
                .with_context(|| format!("no {field} for {iface} in the status"))?;
        }
        Ok(Self::from_values(values))
    }
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rx {} B / {} pkts, tx {} B / {} pkts",
            self.rx_bytes, self.rx_packets, self.tx_bytes, self.tx_packets
        )
    }
}

/// `Ok` when tally's counts equal the kernel's; otherwise every field that
/// differs, with both values and the difference.
pub fn expect_exact(what: &str, tally: Counts, kernel: Counts) -> anyhow::Result<()> {
    let differences: Vec<String> = Counts::FIELDS
        .iter()
        .zip(tally.values().into_iter().zip(kernel.values()))
        .filter(|(_, (ours, theirs))| ours != theirs)
        .map(|(field, (ours, theirs))| {
            let diff = i128::from(ours) - i128::from(theirs);
            format!("{field}: tally {ours}, kernel {theirs} (difference {diff:+})")
        })
        .collect();
    if differences.is_empty() {
        Ok(())
    } else {
        bail!("{what}: {}", differences.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_are_named_with_their_sign() {
        let kernel = Counts {
            rx_bytes: 100,
            tx_bytes: 50,
            rx_packets: 2,
            tx_packets: 1,
        };
        assert!(expect_exact("same", kernel, kernel).is_ok());
        let tally = Counts {
            rx_bytes: 102,
            ..kernel
        };
        let error = expect_exact("veth", tally, kernel)
            .expect_err("differs")
            .to_string();
        assert_eq!(
            error,
            "veth: rx_bytes: tally 102, kernel 100 (difference +2)"
        );
    }

    #[test]
    fn since_refuses_counters_that_went_down() {
        let later = Counts {
            rx_bytes: 10,
            ..Counts::default()
        };
        assert_eq!(later.since(Counts::default()).expect("grew").rx_bytes, 10);
        assert!(Counts::default().since(later).is_err());
    }
}
