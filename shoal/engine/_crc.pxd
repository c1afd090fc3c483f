# The guarded copy of this module, for the other native modules: one SIGBUS handler per
# process (each module built with crc32c.c has its own copy of the handler's state, and
# only this one is ever installed).
from libc.stdint cimport uint32_t

cdef int copy_guard() except -1
cdef int copy_crc32c_guarded(uint32_t *crc, void *dst, const void *src,
                             size_t length) noexcept nogil
