//! What each vCPU does: a list of steps, parsed from `KIND[,key=value]...` separated by `;`.
//!
//! Kinds: `pio_out`, `pio_in` (key `port`), `pio_span` (keys `port`, `span`: writes cycle
//! through `span` distinct ports from `port`), `mmio_w`, `mmio_r` (key `gpa`), `hlt`, `hlt_timer`
//! (key `us`: timer period; needs `--irqchip`), `cpuid` (key
//! `fn`), `rdmsr`, `wrmsr` (key `msr`, `value`), `pf` (guest page faults), `idle` (key `ms`: the
//! vCPU thread sleeps in user space). Every exit kind takes `count` (default 1) and optionally
//! `rate` (exits per second; without it, full speed) and `ms` (run for this long instead of a count);
//! `vmm_us` makes the VMM spend that long on each port write it handles (in `emulate_slow_io`).

use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    PioOut {
        port: u16,
    },
    PioIn {
        port: u16,
    },
    /// `out` to `span` distinct ports in turn: port, port + 1, ..., port + span - 1, port, ...
    PioSpan {
        port: u16,
        span: u16,
    },
    MmioWrite {
        gpa: u64,
    },
    MmioRead {
        gpa: u64,
    },
    Hlt,
    /// HLT woken by the LAPIC timer, armed one-shot per halt (needs `--irqchip`): the halts block
    /// in the kernel.
    HltTimer {
        period_us: u32,
        /// The LAPIC timer periodic rather than one-shot (see `guest`).
        periodic: bool,
    },
    Cpuid {
        function: u32,
    },
    Rdmsr {
        msr: u32,
    },
    Wrmsr {
        msr: u32,
        value: u32,
    },
    PageFault,
    Idle,
}

/// How long a step runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Amount {
    Count(u64),
    For(Duration),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    pub action: Action,
    pub amount: Amount,
    /// Exits per second; None = as fast as the vCPU can.
    pub rate: Option<u64>,
    /// Microseconds the VMM spends handling each port write (`vmm_us`), in a function of its
    /// own: what host stack samples of the VMM should find.
    pub vmm_us: u64,
}

pub const DEFAULT_MMIO_GPA: u64 = 0xd000_0000;
pub const DEFAULT_PORT: u16 = 0x70;

pub fn parse_steps(text: &str) -> anyhow::Result<Vec<Step>> {
    text.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| parse_step(s).with_context(|| format!("in step `{s}`")))
        .collect()
}

fn parse_step(text: &str) -> anyhow::Result<Step> {
    let mut parts = text.split(',').map(str::trim);
    let kind = parts.next().unwrap_or_default();
    let mut kv = std::collections::BTreeMap::new();
    for p in parts {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| anyhow!("expected key=value, got `{p}`"))?;
        kv.insert(k, parse_u64(v).with_context(|| format!("value of `{k}`"))?);
    }
    let mut take = |k: &str| kv.remove(k);
    let action = match kind {
        "pio_out" => Action::PioOut {
            port: port(take("port"))?,
        },
        "pio_in" => Action::PioIn {
            port: port(take("port"))?,
        },
        "pio_span" => {
            let port = port(take("port"))?;
            let span = take("span").unwrap_or(1);
            if span == 0 || port as u64 + span > 0x1_0000 {
                bail!("span must be 1.. and port + span at most 0x10000");
            }
            Action::PioSpan {
                port,
                span: u16::try_from(span.min(0xffff))?,
            }
        }
        "mmio_w" => Action::MmioWrite {
            gpa: take("gpa").unwrap_or(DEFAULT_MMIO_GPA),
        },
        "mmio_r" => Action::MmioRead {
            gpa: take("gpa").unwrap_or(DEFAULT_MMIO_GPA),
        },
        "hlt" => Action::Hlt,
        "hlt_timer" => Action::HltTimer {
            period_us: u32::try_from(take("us").unwrap_or(1000))?,
            periodic: take("periodic").unwrap_or(0) != 0,
        },
        "cpuid" => Action::Cpuid {
            function: u32::try_from(take("fn").unwrap_or(0))?,
        },
        "rdmsr" => Action::Rdmsr {
            msr: u32::try_from(take("msr").unwrap_or(0xc000_0102))?,
        },
        "wrmsr" => Action::Wrmsr {
            msr: u32::try_from(take("msr").unwrap_or(0xc000_0102))?,
            value: u32::try_from(take("value").unwrap_or(0))?,
        },
        "pf" => Action::PageFault,
        "idle" => Action::Idle,
        other => bail!(
            "unknown step kind `{other}` (pio_out pio_in pio_span mmio_w mmio_r hlt cpuid rdmsr wrmsr pf idle)"
        ),
    };
    let amount = match (take("count"), take("ms")) {
        (Some(_), Some(_)) => bail!("give `count` or `ms`, not both"),
        (Some(0), None) => bail!("count must be at least 1"),
        (Some(n), None) => Amount::Count(n),
        (None, Some(ms)) => Amount::For(Duration::from_millis(ms)),
        (None, None) if action == Action::Idle => bail!("idle needs `ms`"),
        (None, None) => Amount::Count(1),
    };
    if action == Action::Idle && matches!(amount, Amount::Count(_)) {
        bail!("idle takes `ms`, not `count`");
    }
    let vmm_us = take("vmm_us").unwrap_or(0);
    let rate = take("rate");
    if rate == Some(0) {
        bail!("rate must be at least 1 per second");
    }
    if let Some(k) = kv.keys().next() {
        bail!("unknown key `{k}` for `{kind}`");
    }
    Ok(Step {
        action,
        amount,
        rate,
        vmm_us,
    })
}

fn port(v: Option<u64>) -> anyhow::Result<u16> {
    let p = v.unwrap_or(DEFAULT_PORT as u64);
    u16::try_from(p).map_err(|_| anyhow!("port {p:#x} is above 0xffff"))
}

fn parse_u64(v: &str) -> anyhow::Result<u64> {
    let v = v.replace('_', "");
    Ok(match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16)?,
        None => v.parse()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_mix() {
        let steps =
            parse_steps("pio_out,port=0x70,count=20_000; mmio_w,count=5000;wrmsr,msr=0xc0000102,count=3000;idle,ms=2000;hlt,ms=3000,rate=100")
                .unwrap();
        assert_eq!(
            steps,
            vec![
                Step {
                    action: Action::PioOut { port: 0x70 },
                    amount: Amount::Count(20_000),
                    rate: None,
                    vmm_us: 0,
                },
                Step {
                    action: Action::MmioWrite {
                        gpa: DEFAULT_MMIO_GPA
                    },
                    amount: Amount::Count(5000),
                    rate: None,
                    vmm_us: 0,
                },
                Step {
                    action: Action::Wrmsr {
                        msr: 0xc000_0102,
                        value: 0
                    },
                    amount: Amount::Count(3000),
                    rate: None,
                    vmm_us: 0,
                },
                Step {
                    action: Action::Idle,
                    amount: Amount::For(Duration::from_secs(2)),
                    rate: None,
                    vmm_us: 0,
                },
                Step {
                    action: Action::Hlt,
                    amount: Amount::For(Duration::from_secs(3)),
                    rate: Some(100),
                    vmm_us: 0,
                },
            ]
        );
    }

    #[test]
    fn rejects_bad_steps() {
        for bad in [
            "bogus",
            "pio_out,port=0x10000",
            "pio_out,count=0",
            "idle",
            "pio_out,colour=1",
            "hlt,count=1,ms=2",
            "pio_out,port",
        ] {
            assert!(parse_steps(bad).is_err(), "{bad} should fail");
        }
    }
}
