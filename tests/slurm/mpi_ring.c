/* tests/slurm/mpi_ring.c - a token goes around all ranks, then a sum over all ranks.
 * Prints one line per rank: "ring rank R/N host H sum S token T".
 * With the argument "allreduce" only the sum (MPICH 4.0.2 + UCX over TCP here sometimes hangs
 * in MPI_Finalize after point-to-point traffic between nodes, with or without containers). */
#include <mpi.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
    int rank, size, len, sum = 0, token = 0;
    char host[MPI_MAX_PROCESSOR_NAME];
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Get_processor_name(host, &len);
    if (size > 1 && !(argc > 1 && strcmp(argv[1], "allreduce") == 0)) {
        if (rank == 0) {
            token = 1;
            MPI_Send(&token, 1, MPI_INT, 1, 0, MPI_COMM_WORLD);
            MPI_Recv(&token, 1, MPI_INT, size - 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        } else {
            MPI_Recv(&token, 1, MPI_INT, rank - 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            token++;
            MPI_Send(&token, 1, MPI_INT, (rank + 1) % size, 0, MPI_COMM_WORLD);
        }
    }
    MPI_Allreduce(&rank, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    printf("ring rank %d/%d host %s sum %d token %d\n", rank, size, host, sum, token);
    MPI_Finalize();
    return 0;
}
