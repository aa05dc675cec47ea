//! User-side impls: `aya::Pod` for every type that crosses the map boundary.

// SAFETY (for all impls below): each type is #[repr(C)], Copy, made only of integers and integer
// arrays, and has no implicit padding, so any byte pattern is a valid value.
unsafe impl aya::Pod for crate::Config {}
unsafe impl aya::Pod for crate::ThreadState {}
unsafe impl aya::Pod for crate::PendingDetail {}
unsafe impl aya::Pod for crate::LatencyKey {}
unsafe impl aya::Pod for crate::LatencyStats {}
unsafe impl aya::Pod for crate::DetailKey {}
unsafe impl aya::Pod for crate::stacks::StackKey {}
unsafe impl aya::Pod for crate::stacks::StackFrames {}
unsafe impl aya::Pod for crate::slow::SlowExit {}
unsafe impl aya::Pod for crate::slow::FlightRing {}
unsafe impl aya::Pod for crate::RipKey {}
