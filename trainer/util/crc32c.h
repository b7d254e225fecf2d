// CRC-32C (Castagnoli, polynomial 0x1EDC6F41 reflected as 0x82F63B78), the
// checksum of iSCSI, ext4, TFRecord and TensorBoard event files. Checkpoints
// record it for every tensor; the TensorBoard writer frames its records with
// the masked form.
#ifndef PREFOPT_TRAINER_UTIL_CRC32C_H_
#define PREFOPT_TRAINER_UTIL_CRC32C_H_

#include <cstddef>
#include <cstdint>

namespace prefopt::util {

// The CRC-32C of `n` bytes at `data`, continuing from `crc`, the CRC-32C of
// the bytes before them (0 for none): Crc32c(b, nb, Crc32c(a, na)) equals the
// CRC-32C of a followed by b. Uses the SSE4.2 crc32 instruction when the CPU
// has it, else a table.
uint32_t Crc32c(const void* data, size_t n, uint32_t crc = 0);

// The masked CRC of TFRecord and TensorBoard event files: a CRC rotated right
// by 15 bits plus 0xa282ead8, so that a CRC stored next to the data it covers
// does not checksum to a fixed value.
uint32_t MaskCrc32c(uint32_t crc);

// MaskCrc32c(Crc32c(data, n)).
uint32_t MaskedCrc32c(const void* data, size_t n);

namespace internal {

// The two implementations behind Crc32c, exposed so that tests can check them
// against each other. Crc32cHardware requires HasCrc32cInstruction().
uint32_t Crc32cTable(const void* data, size_t n, uint32_t crc);
uint32_t Crc32cHardware(const void* data, size_t n, uint32_t crc);
bool HasCrc32cInstruction();

}  // namespace internal
}  // namespace prefopt::util

#endif  // PREFOPT_TRAINER_UTIL_CRC32C_H_
