//! A byte cap on the tensors a guest keeps on the host.
//!
//! A wasi-nn tensor's data is copied out of the guest's linear memory into
//! the host, where `--max-memory` does not see it: a guest creating tensor
//! after tensor could hold any amount of host memory. Every tensor the guest
//! is given, from the host's own `tensor` constructor (see `sandbox::engine`)
//! or as the rows of `predict-rows` (`sandbox::rows`), goes through
//! [`GuestTensors::push`]: admitted only while the ones the guest still holds,
//! plus it, stay within the cap.

use wasmtime::component::{Resource, ResourceTable, ResourceTableError};
use wasmtime_wasi_nn::Tensor;

/// A new tensor would take the guest's tensors over the cap.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the guest's wasi-nn tensors would hold {held} bytes of host memory, over its cap of {cap} bytes (--max-memory)")]
pub struct TensorsOverCap {
    /// What the guest's tensors would hold with the new one.
    pub held: usize,
    /// The new tensor's bytes: over the cap alone, no tensor the guest kept
    /// is to blame.
    pub tensor: usize,
    /// The cap.
    pub cap: usize,
}

/// Why a tensor could not be given to the guest: its sandbox holds too much
/// already.
#[derive(Debug, thiserror::Error)]
pub enum Unhanded {
    #[error(transparent)]
    OverCap(#[from] TensorsOverCap),
    #[error("the sandbox's resource table is full: {0}")]
    TableFull(#[from] ResourceTableError),
}

/// The tensors one guest created, by table slot, with their sizes.
#[derive(Debug, Default)]
pub struct GuestTensors {
    /// Live tensors the guest created: their table slot and data bytes.
    held: Vec<(u32, usize)>,
    /// Most bytes they may hold together.
    cap: usize,
}

impl GuestTensors {
    /// No more than `cap` bytes of tensors at once.
    pub fn new(cap: usize) -> Self {
        Self {
            held: Vec::new(),
            cap,
        }
    }

    /// Most bytes the guest's tensors may hold together.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Puts `tensor` in `table` for the guest, within the cap.
    pub fn push(
        &mut self,
        table: &mut ResourceTable,
        tensor: Tensor,
    ) -> Result<Resource<Tensor>, Unhanded> {
        let bytes = tensor.data.len();
        self.admit(table, bytes)?;
        let tensor = table.push(tensor)?;
        self.record(tensor.rep(), bytes);
        Ok(tensor)
    }

    /// Admits a tensor of `bytes`, first forgetting the ones the guest has
    /// dropped (their slots no longer hold a tensor). A slot reused by a
    /// tensor the host made (an output) is still counted: the error is on the
    /// side of the cap.
    fn admit(&mut self, table: &ResourceTable, bytes: usize) -> Result<(), TensorsOverCap> {
        self.held
            .retain(|(rep, _)| table.get(&Resource::<Tensor>::new_own(*rep)).is_ok());
        let held = self
            .held
            .iter()
            .map(|(_, b)| b)
            .sum::<usize>()
            .saturating_add(bytes);
        if held > self.cap {
            return Err(TensorsOverCap {
                held,
                tensor: bytes,
                cap: self.cap,
            });
        }
        Ok(())
    }

    /// Records an admitted tensor in slot `rep`.
    fn record(&mut self, rep: u32, bytes: usize) {
        self.held.push((rep, bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime_wasi_nn::wit::TensorType;

    fn tensor(bytes: usize) -> Tensor {
        Tensor {
            dimensions: vec![bytes as u32],
            ty: TensorType::U8,
            data: vec![0; bytes],
        }
    }

    #[test]
    fn held_tensors_count_until_dropped() {
        let mut table = ResourceTable::new();
        let mut tensors = GuestTensors::new(100);
        tensors.admit(&table, 60).unwrap();
        let first = table.push(tensor(60)).unwrap();
        tensors.record(first.rep(), 60);
        let e = tensors.admit(&table, 60).unwrap_err();
        assert_eq!(
            e,
            TensorsOverCap {
                held: 120,
                tensor: 60,
                cap: 100
            }
        );
        table.delete(first).unwrap();
        tensors.admit(&table, 60).unwrap();
    }
}
