// Umbrella of the optional mpi component (target engram::mpi, links MPI): the world Communicator
// (a train::Collective for data-parallel training and distributed CMA-ES) and the Session that
// starts and ends MPI for a program.
#pragma once

#include "engram/mpi/communicator.hpp"
#include "engram/mpi/session.hpp"
