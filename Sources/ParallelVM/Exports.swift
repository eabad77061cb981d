// Tasks log through swift-log's Logger (TaskContext.logger), so programs using the VM get Logging with it.
@_exported public import Logging
// Experiments (a results journal that lets a dispatch resume), passed to `VM.dispatch(_:experiment:...)`.
@_exported public import ParallelVMExperiment
@_exported public import ParallelVMStorage
