"""The pixel limit on images, read from the header before anything is decoded.

A few hundred kilobytes of PNG can declare 23000 x 23000 pixels, which decode
to 1.6 GB. The converter, predict and the exported SavedModel read the size
an image declares (JPEG's frame header, PNG's IHDR, GIF's screen descriptor,
BMP's info header) and refuse it above a limit, before decoding. The same
TensorFlow ops serve all three, eagerly or inside a graph. (TensorFlow is
imported when they are first used, so that flags can read the default.)
"""

DEFAULT_MAX_PIXELS = 100_000_000  # 100 megapixels: well above any camera photo (a 50 MP camera makes 8688 x 5792)
_HEADER_BYTES = 32


def declared_size(encoded):
    """(height, width) as int64 scalars that the image's header declares; (0, 0) for a format it does not know.

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

    prefix = tf.strings.substr(head, 0, 8)
    is_png = tf.equal(prefix, b"\x89PNG\r\n\x1a\n")
    is_gif = tf.equal(tf.strings.substr(head, 0, 4), b"GIF8")
    is_bmp = tf.equal(tf.strings.substr(head, 0, 2), b"BM")

    def jpeg():
        shape = tf.cast(tf.image.extract_jpeg_shape(encoded), tf.int64)
        return shape[0], shape[1]

    def other():
        height = tf.where(is_png, number(20, 4, True),
                          tf.where(is_gif, number(8, 2, False),
                                   tf.where(is_bmp, tf.abs(signed32(number(22, 4, False))), 0)))
        width = tf.where(is_png, number(16, 4, True),
                         tf.where(is_gif, number(6, 2, False),
                                  tf.where(is_bmp, tf.abs(signed32(number(18, 4, False))), 0)))
        return height, width

    return tf.cond(tf.io.is_jpeg(encoded), jpeg, other)


def checked(encoded, max_pixels):
    """`encoded`, once its header is known to declare at most `max_pixels` (else InvalidArgumentError naming the
    size): decode what this returns, and the check runs first, also inside a graph."""
    import tensorflow as tf

    height, width = declared_size(encoded)
    within = tf.debugging.Assert(height * width <= max_pixels,
                                 ["image declares", width, "x", height, f"pixels, above the limit of {max_pixels:,}"])
    with tf.control_dependencies([within]):
        return tf.identity(encoded)


def problem(data, max_pixels):
    """Why the encoded bytes `data` are over the limit (a sentence), or None; the header only is read."""
    import tensorflow as tf

    try:
        height, width = (int(value) for value in declared_size(tf.constant(data)))
    except tf.errors.InvalidArgumentError:
        return None  # no readable size: decoding will tell what is wrong
    if height * width > max_pixels:
        return (f"declares {width} x {height} pixels ({height * width / 1e6:,.0f} megapixels), above the limit of "
                f"{max_pixels / 1e6:,.0f} megapixels (--max_image_pixels)")
    return None
