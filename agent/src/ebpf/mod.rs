//! The eBPF side of the agent: loading and attaching the programs, the pinned
//! maps, and removing everything again.

pub mod detach;
pub mod engine;
mod error;
pub mod fold;
pub mod hooks;
pub mod legacy;
pub mod maps;

/// The counter epoch as text: 32 lowercase hex digits.
pub fn epoch_hex(epoch: &[u8; 16]) -> String {
    epoch.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn epoch_is_hex() {
        let mut epoch = [0u8; 16];
        epoch[0] = 0xab;
        epoch[15] = 0x01;
        assert_eq!(super::epoch_hex(&epoch), "ab000000000000000000000000000001");
    }
}
