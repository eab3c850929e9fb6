"""The pixel limit on images, read from the header before anything is decoded.

A few hundred kilobytes of PNG can declare 23000 x 23000 pixels, which decode
to 1.6 GB, and 34 bytes of WebP 16383 x 16383. The converter, the trainer's
input pipeline, predict and the exported SavedModel read the size an image
declares (JPEG's frame header, PNG's IHDR, GIF's screen descriptor, BMP's
info header, WebP's VP8 / VP8L / VP8X header) and refuse it above a limit,
before decoding; bytes in any other format (TensorFlow's decoder also takes
JPEG XL, whose size is not read here) are refused as not an image of these
five. An animated GIF or WebP decodes to its first frame only
(`expand_animations=False`), so its canvas bounds what is decoded. The same
TensorFlow ops serve everyone, eagerly or inside a graph. (TensorFlow is
imported when they are first used, so that flags can read the default.)
"""

DEFAULT_MAX_PIXELS = 100_000_000  # 100 megapixels: well above any camera photo (a 50 MP camera makes 8688 x 5792)
_HEADER_BYTES = 32


FORMATS = "JPEG, PNG, GIF, BMP or WebP"


def declared_size(encoded):
    """(height, width) as int64 scalars that the image's header declares; (-1, -1) for a format it does not know.

    A JPEG whose header does not parse raises InvalidArgumentError, as its decode would.
    """
    import tensorflow as tf

    head = tf.strings.substr(tf.strings.join([tf.strings.substr(encoded, 0, _HEADER_BYTES),
                                              "\0" * _HEADER_BYTES]), 0, _HEADER_BYTES)
    header = tf.cast(tf.io.decode_raw(head, tf.uint8), tf.int64)

    def number(start, length, big_endian):
        digits = [header[start + k] for k in range(length)]
        if not big_endian:
            digits = digits[::-1]
        value = tf.constant(0, tf.int64)
        for digit in digits:
            value = value * 256 + digit
        return value

    def signed32(value):
        return tf.where(value >= 2**31, value - 2**32, value)

    def starts(offset, text):
        return tf.equal(tf.strings.substr(head, offset, len(text)), text)

    is_png, is_gif, is_bmp = starts(0, b"\x89PNG\r\n\x1a\n"), starts(0, b"GIF8"), starts(0, b"BM")
    is_webp = tf.logical_and(starts(0, b"RIFF"), starts(8, b"WEBP"))
    lossy, lossless, extended = (tf.logical_and(is_webp, starts(12, chunk)) for chunk in (b"VP8 ", b"VP8L", b"VP8X"))
    packed = number(21, 4, False)  # VP8L: 14 bits of width - 1, then 14 of height - 1

    def jpeg():
        shape = tf.cast(tf.image.extract_jpeg_shape(encoded), tf.int64)
        return shape[0], shape[1]

    def other():
        # (format, height, width) in order; the first that matches gives the size, none: -1.
        sizes = [
            (is_png, number(20, 4, True), number(16, 4, True)),
            (is_gif, number(8, 2, False), number(6, 2, False)),
            (is_bmp, tf.abs(signed32(number(22, 4, False))), tf.abs(signed32(number(18, 4, False)))),
            (lossy, number(28, 2, False) % 2**14, number(26, 2, False) % 2**14),
            (lossless, (packed // 2**14) % 2**14 + 1, packed % 2**14 + 1),
            (extended, number(27, 3, False) + 1, number(24, 3, False) + 1),
        ]
        height = width = tf.constant(-1, tf.int64)
        for matches, format_height, format_width in reversed(sizes):
            height, width = tf.where(matches, format_height, height), tf.where(matches, format_width, width)
        return height, width

    return tf.cond(tf.io.is_jpeg(encoded), jpeg, other)


def checked(encoded, max_pixels):
    """`encoded`, once its header is known to declare at most `max_pixels` in one of the FORMATS (else
    InvalidArgumentError naming the size, or the formats): decode what this returns, and the check runs first,
    also inside a graph."""
    import tensorflow as tf

    height, width = declared_size(encoded)
    known = tf.debugging.Assert(height >= 0, [f"not a {FORMATS} image: its size cannot be read before decoding"])
    with tf.control_dependencies([known]):
        within = tf.debugging.Assert(height * width <= max_pixels,
                                     ["image declares", width, "x", height,
                                      f"pixels, above the limit of {max_pixels:,}"])
    with tf.control_dependencies([within]):
        return tf.identity(encoded)


def problem(data, max_pixels):
    """Why the encoded bytes `data` are over the limit (a sentence), or None; the header only is read. (Bytes in
    no format it knows are left to the decoder, which names what is wrong with them.)"""
    import tensorflow as tf

    try:
        height, width = (int(value) for value in declared_size(tf.constant(data)))
    except tf.errors.InvalidArgumentError:
        return None  # no readable size: decoding will tell what is wrong
    if height * width > max_pixels:
        return (f"declares {width} x {height} pixels ({height * width / 1e6:,.0f} megapixels), above the limit of "
                f"{max_pixels / 1e6:,.0f} megapixels (--max_image_pixels)")
    return None
