#include "registry.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The first byte picks multipart or a single part and how the body is cut
 * into pieces, as a network would deliver it. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static unsigned char buf[3][4000];
	struct byterange ranges[3] = { { .off = 0, .len = 100, .buf = buf[0] },
				       { .off = 200, .len = 100, .buf = buf[1] },
				       { .off = 1000, .len = 4000, .buf = buf[2] } };
	if (size < 1)
		return 0;
	uint8_t mode = data[0];
	data++;
	size--;
	struct byteranges *b = mode & 1 ? byteranges_new_single("bytes 200-4999/*", ranges, 3)
					: byteranges_new("multipart/byteranges; boundary=B", ranges, 3);
	if (!b)
		return 0;
	size_t piece = (size_t)(mode >> 1) + 1;
	int r = 0;
	for (size_t i = 0; r == 0 && i < size; i += piece)
		r = byteranges_feed(b, data + i, size - i < piece ? size - i : piece);
	if (r == 0)
		(void)byteranges_finish(b);
	for (size_t i = 0; i < 3; i++)
		if (ranges[i].got > ranges[i].len)
			__builtin_trap();
	byteranges_free(b);
	return 0;
}
