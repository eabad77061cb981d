// Tasks log through swift-log's Logger (TaskContext.logger), so programs using the VM get Logging with it.
@_exported public import Logging
@_exported public import ParallelVMStorage
