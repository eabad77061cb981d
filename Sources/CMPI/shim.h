// Open MPI's predefined handles (MPI_COMM_WORLD, MPI_BYTE, ...) are macros that cast the address of a
// global object, and MPI_STATUS_IGNORE is a cast of 0. Swift imports neither, so each gets a static
// inline getter here. The swift_name attribute keeps the C spelling on the Swift side.
#ifndef PARALLELVM_CMPI_SHIM_H
#define PARALLELVM_CMPI_SHIM_H

#include <mpi.h>

// The world communicator; the VM duplicates it so its own traffic never meets user MPI traffic.
static inline MPI_Comm cmpi_comm_world(void) __attribute__((swift_name("getter:MPI_COMM_WORLD()")));
static inline MPI_Comm cmpi_comm_world(void) { return MPI_COMM_WORLD; }

// Compared against, to know whether a communicator handle still needs freeing.
static inline MPI_Comm cmpi_comm_null(void) __attribute__((swift_name("getter:MPI_COMM_NULL()")));
static inline MPI_Comm cmpi_comm_null(void) { return MPI_COMM_NULL; }

// Every VM message is a run of bytes.
static inline MPI_Datatype cmpi_byte(void) __attribute__((swift_name("getter:MPI_BYTE()")));
static inline MPI_Datatype cmpi_byte(void) { return MPI_BYTE; }

// Makes MPI calls return error codes instead of aborting the job, so Swift can throw.
static inline MPI_Errhandler cmpi_errors_return(void) __attribute__((swift_name("getter:MPI_ERRORS_RETURN()")));
static inline MPI_Errhandler cmpi_errors_return(void) { return MPI_ERRORS_RETURN; }

// Passed where a receive or test does not need the status.
static inline MPI_Status *cmpi_status_ignore(void) __attribute__((swift_name("getter:MPI_STATUS_IGNORE()")));
static inline MPI_Status *cmpi_status_ignore(void) { return MPI_STATUS_IGNORE; }

// A fresh message handle for MPI_Mprobe / MPI_Improbe to fill in.
static inline MPI_Message cmpi_message_null(void) __attribute__((swift_name("getter:MPI_MESSAGE_NULL()")));
static inline MPI_Message cmpi_message_null(void) { return MPI_MESSAGE_NULL; }

// A fresh request handle for MPI_Isend to fill in.
static inline MPI_Request cmpi_request_null(void) __attribute__((swift_name("getter:MPI_REQUEST_NULL()")));
static inline MPI_Request cmpi_request_null(void) { return MPI_REQUEST_NULL; }

#endif
