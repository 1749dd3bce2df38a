//! Graph mode: one captured graph per kernel (start stamp → poison → fence →
//! (hang node) → start event → kernel → end event → end stamp → done event → plant node →
//! checks), and the nodes in it that plant faults through the real graph.
//!
//! The plant node (a one-element memset after the end event) is disabled
//! except for the one launch that carries a [`Fault::Corrupt`]; a
//! [`Fault::Skip`] disables the kernel's own nodes for one launch instead
//! (`cuGraphNodeSetEnabled`). A [`Fault::Hang`] enables the hang node (a
//! one-thread kernel spinning on the GPU timer, captured only where the
//! stamp kernels loaded) for one launch. A graph whose shape is not recognised is
//! captured again without a plant node, and faults then go through separate
//! stream calls.
#![allow(unsafe_code)]

use cudarc::driver::{sys as drv_sys, CudaEvent, CudaGraph, DevicePtr};

use super::{kidx, CudaBackend};
use crate::spec::{Kernel, Precision};
use crate::{Fault, ProbeError};

/// Nodes of a captured graph that the fault planting toggles.
pub(super) struct FaultNodes {
    /// The kernel's own nodes (between the start and end events).
    probe: Vec<drv_sys::CUgraphNode>,
    /// The one-element memset after the end event, disabled normally.
    plant: drv_sys::CUgraphNode,
    /// The spin kernel before the start event, disabled normally; `None`
    /// without the stamp kernels.
    hang: Option<drv_sys::CUgraphNode>,
}

impl CudaBackend {
    /// Captures one graph per kernel into `self.graphs`. A kernel whose
    /// capture fails is logged and left to separate stream calls.
    pub(super) fn capture_graphs(&mut self) {
        for k in [Kernel::Fft, Kernel::Gemm] {
            let with_hang = self.stamps.is_some();
            let captured = self.capture(k, true).and_then(|g| match fault_nodes(&g, with_hang) {
                Some(nodes) => Ok((g, Some(nodes))),
                None => {
                    // Without a disabled plant node the graph would
                    // corrupt every run: capture it again without one.
                    tracing::warn!(gpu = %self.info.uuid, kernel = k.as_str(), "could not find the plant and kernel nodes in the captured graph; faults are planted through separate stream calls");
                    drop(g);
                    self.capture(k, false).map(|g| (g, None))
                }
            });
            match captured {
                Ok(g) => self.graphs[kidx(k)] = Some(g),
                Err(e) => {
                    // Leave the stream usable; this kernel is then timed
                    // with the same fenced sequence as separate calls.
                    let _ = self
                        .stream
                        .end_capture(drv_sys::CUgraphInstantiate_flags_enum(0));
                    tracing::warn!(gpu = %self.info.uuid, kernel = k.as_str(), error = %e, "CUDA graph capture failed; timing with separate stream calls");
                }
            }
        }
    }

    /// Records `ev` as an external event node (a timestamp) in a capture.
    fn record_external(&self, ev: &CudaEvent) -> Result<(), ProbeError> {
        // SAFETY: event and stream belong to this context.
        ck!("cuEventRecordWithFlags", unsafe {
            drv_sys::cuEventRecordWithFlags(
                ev.cu_event(),
                self.stream.cu_stream(),
                drv_sys::CUevent_record_flags::CU_EVENT_RECORD_EXTERNAL as u32,
            )
            .result()
        })
    }

    /// Captures start stamp → poison → fence → start event → kernel → end
    /// event → end stamp → done event → (plant) → checks.
    fn capture(&mut self, kernel: Kernel, with_plant: bool) -> Result<CudaGraph, ProbeError> {
        ck!(
            "cuStreamBeginCapture",
            self.stream
                .begin_capture(drv_sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        )?;
        self.enqueue_stamp(super::stamp::SLOT_START)?;
        self.enqueue_poison(kernel)?;
        self.enqueue_fence()?;
        if with_plant {
            self.enqueue_spin()?;
        }
        self.record_external(&self.ev_start)?;
        self.enqueue(kernel)?;
        self.record_external(&self.ev_end)?;
        self.enqueue_stamp(super::stamp::SLOT_END)?;
        self.record_external(&self.ev_done)?;
        if with_plant {
            self.plant(kernel)?;
        }
        self.enqueue_checks(kernel)?;
        let g = ck!(
            "cuStreamEndCapture",
            self.stream
                .end_capture(drv_sys::CUgraphInstantiate_flags_enum(0))
        )?
        .ok_or(ProbeError::Cuda {
            what: "cuStreamEndCapture",
            detail: "empty graph".into(),
        })?;
        ck!("cuGraphUpload", g.upload())?;
        ck!("cuStreamSynchronize", self.stream.synchronize())?;
        Ok(g)
    }

    /// Overwrites the first output element with the plant value (a
    /// one-element memset, so that it can live in the captured graph as a
    /// node that is disabled except when a fault is planted).
    pub(super) fn plant(&mut self, kernel: Kernel) -> Result<(), ProbeError> {
        let cs = self.stream.cu_stream();
        match kernel {
            Kernel::Fft => {
                let bits = self.fft_ref.plant_value().to_bits();
                let (o, _go) = self.fft_out.device_ptr(&self.stream);
                // SAFETY: o holds at least one f32.
                ck!("plant fft", unsafe {
                    drv_sys::cuMemsetD32Async(o, bits, 1, cs).result()
                })
            }
            Kernel::Gemm => {
                let v = self.gemm_ref.plant_value();
                let (c, _gc) = self.c.buf.device_ptr(&self.stream);
                // SAFETY: C holds at least one element of its precision.
                ck!("plant gemm", unsafe {
                    match self.spec.gemm.precision {
                        Precision::Fp32 => {
                            drv_sys::cuMemsetD32Async(c, v.to_bits(), 1, cs).result()
                        }
                        Precision::Fp16 => {
                            drv_sys::cuMemsetD16Async(c, half::f16::from_f32(v).to_bits(), 1, cs)
                                .result()
                        }
                        Precision::Bf16 => {
                            drv_sys::cuMemsetD16Async(c, half::bf16::from_f32(v).to_bits(), 1, cs)
                                .result()
                        }
                    }
                })
            }
        }
    }
}

/// Finds the nodes fault planting toggles in a captured graph. Stream
/// capture on one stream yields a chain in submission order: start stamp,
/// poison memsets, fence kernel, start event, the kernel's nodes, end event,
/// end stamp, done event, plant memset, check kernels. Returns `None` (and the caller plants through stream
/// calls) when the graph does not have that shape.
fn fault_nodes(g: &CudaGraph, with_hang: bool) -> Option<FaultNodes> {
    use drv_sys::CUgraphNodeType as T;
    let graph = g.cu_graph();
    let mut n: usize = 0;
    // SAFETY: querying the node count of a valid graph.
    unsafe { drv_sys::cuGraphGetNodes(graph, std::ptr::null_mut(), &mut n) }
        .result()
        .ok()?;
    let mut nodes: Vec<drv_sys::CUgraphNode> = vec![std::ptr::null_mut(); n];
    // SAFETY: `nodes` has room for `n` handles.
    unsafe { drv_sys::cuGraphGetNodes(graph, nodes.as_mut_ptr(), &mut n) }
        .result()
        .ok()?;
    nodes.truncate(n);
    let types: Vec<T> = nodes
        .iter()
        .map(|&node| {
            let mut t = T::CU_GRAPH_NODE_TYPE_EMPTY;
            // SAFETY: node is a valid node of this graph.
            let _ = unsafe { drv_sys::cuGraphNodeGetType(node, &mut t) };
            t
        })
        .collect();
    let records: Vec<usize> = types
        .iter()
        .enumerate()
        .filter(|(_, t)| **t == T::CU_GRAPH_NODE_TYPE_EVENT_RECORD)
        .map(|(i, _)| i)
        .collect();
    let [start, end, done] = records[..] else {
        return None;
    };
    let probe: Vec<_> = (start + 1..end)
        .filter(|&i| {
            matches!(
                types[i],
                T::CU_GRAPH_NODE_TYPE_KERNEL
                    | T::CU_GRAPH_NODE_TYPE_MEMSET
                    | T::CU_GRAPH_NODE_TYPE_MEMCPY
            )
        })
        .map(|i| nodes[i])
        .collect();
    let plant_i = done + 1;
    if probe.is_empty() || types.get(plant_i) != Some(&T::CU_GRAPH_NODE_TYPE_MEMSET) {
        return None;
    }
    let plant = nodes[plant_i];
    // The hang node is the spin kernel captured right before the start event.
    let hang = if with_hang {
        let i = start.checked_sub(1)?;
        if types[i] != T::CU_GRAPH_NODE_TYPE_KERNEL {
            return None;
        }
        Some(nodes[i])
    } else {
        None
    };
    for n in std::iter::once(plant).chain(hang) {
        // SAFETY: n is a node of the graph this exec was made from.
        unsafe { drv_sys::cuGraphNodeSetEnabled(g.cu_graph_exec(), n, 0) }
            .result()
            .ok()?;
    }
    Some(FaultNodes { probe, plant, hang })
}

/// Arms (`on`) or disarms a fault in the graph exec for later launches.
pub(super) fn set_fault_nodes(
    g: &CudaGraph,
    nodes: &FaultNodes,
    fault: Fault,
    on: bool,
) -> Result<(), ProbeError> {
    let exec = g.cu_graph_exec();
    // SAFETY: the nodes belong to the graph this exec was instantiated from.
    unsafe {
        match fault {
            Fault::Corrupt => ck!(
                "cuGraphNodeSetEnabled",
                drv_sys::cuGraphNodeSetEnabled(exec, nodes.plant, u32::from(on)).result()
            ),
            Fault::Hang => match nodes.hang {
                Some(n) => ck!(
                    "cuGraphNodeSetEnabled",
                    drv_sys::cuGraphNodeSetEnabled(exec, n, u32::from(on)).result()
                ),
                None => Ok(()),
            },
            Fault::Skip => {
                for &n in &nodes.probe {
                    ck!(
                        "cuGraphNodeSetEnabled",
                        drv_sys::cuGraphNodeSetEnabled(exec, n, u32::from(!on)).result()
                    )?;
                }
                Ok(())
            }
        }
    }
}
