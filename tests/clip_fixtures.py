"""A tiny random CLIP saved as a KerasHub preset directory: what `spml-vl-scores --preset=DIR` loads in the tests.

The tokenizer is built here: CLIP's byte-level BPE needs every one of the 256 byte symbols (plain and with the
end-of-word mark) in its vocabulary, merges that are unique and made of vocabulary entries, and <|endoftext|> with
the largest id (CLIP's text pooler reads the position of the largest id). Everything is saved with KerasHub's own
`save_to_preset`, so the tests load it through the same `from_preset` path a user's preset takes.
"""

import os

IMAGE_SIZE = 16  # the preset's input side (patch 8: 4 patches and the class token)
SEQUENCE_LENGTH = 12
WORDS = ("a", "photo", "of", "the", "cat", "dog", "person", "zero", "one", "two", "three", "four", "five", "six",
         "seven", "eight", "nine", "aeroplane", "bicycle", "bird")


def byte_symbols():
    """The 256 printable symbols byte-level BPE writes bytes as: printable Latin-1 bytes stand for themselves, the
    others are moved to code points from 256 up, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols, moved = {}, 0
    for byte in range(256):
        if byte in printable:
            symbols[byte] = chr(byte)
        else:
            symbols[byte] = chr(256 + moved)
            moved += 1
    return [symbols[byte] for byte in range(256)]


def vocabulary_and_merges(words=WORDS):
    """(token -> id, ["left right", ...]) of a tiny CLIP tokenizer that merges `words` into single tokens."""
    vocabulary = {}
    for suffix in ("", "</w>"):
        for symbol in byte_symbols():
            vocabulary[symbol + suffix] = len(vocabulary)
    merges = []
    for word in words:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        merged = pieces[0]
        for piece in pieces[1:]:
            rule = f"{merged} {piece}"
            merged += piece
            if rule not in merges:
                merges.append(rule)
                vocabulary.setdefault(merged, len(vocabulary))
    vocabulary["<|startoftext|>"] = len(vocabulary)
    vocabulary["<|endoftext|>"] = len(vocabulary)  # the largest id: the text pooler's position
    return vocabulary, merges


def save_tiny_clip(directory, seed=0, image_size=IMAGE_SIZE):
    """A random CLIPBackbone (2 layers of width 16, embeddings of 8) with its CLIPPreprocessor (tokenizer and the
    OpenAI image converter's settings) saved into `directory`; returns it."""
    import keras
    import keras_hub

    keras.utils.set_random_seed(seed)
    vocabulary, merges = vocabulary_and_merges()
    tokenizer = keras_hub.models.CLIPTokenizer(vocabulary=vocabulary, merges=merges, pad_with_end_token=True)
    vision = keras_hub.models.CLIPVisionEncoder(patch_size=8, hidden_dim=16, num_layers=2, num_heads=2,
                                                intermediate_dim=32, image_shape=(image_size, image_size, 3))
    text = keras_hub.models.CLIPTextEncoder(vocabulary_size=len(vocabulary), embedding_dim=16, hidden_dim=16,
                                            num_layers=2, num_heads=2, intermediate_dim=32,
                                            max_sequence_length=SEQUENCE_LENGTH)
    backbone = keras_hub.models.CLIPBackbone(vision_encoder=vision, text_encoder=text, projection_dim=8)
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    converter = keras_hub.layers.CLIPImageConverter(
        image_size=(image_size, image_size), scale=[1.0 / 255.0 / s for s in std],
        offset=[-m / s for m, s in zip(mean, std)], interpolation="bicubic")
    preprocessor = keras_hub.models.CLIPPreprocessor(tokenizer=tokenizer, image_converter=converter,
                                                     sequence_length=SEQUENCE_LENGTH)
    os.makedirs(directory, exist_ok=True)
    backbone.save_to_preset(directory)
    preprocessor.save_to_preset(directory)
    return directory


def save_tiny_siglip(directory, seed=0, image_size=IMAGE_SIZE):
    """A random SigLIPBackbone with its SigLIPPreprocessor (a SentencePiece model trained here on a few prompts, the
    official converter's settings: mean = std = 0.5, bicubic, antialias, no crop) saved into `directory`."""
    import io

    import keras
    import keras_hub
    import sentencepiece

    keras.utils.set_random_seed(seed)
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(["a photo of a cat.", "a photo of a dog.", "a photo of a person.", "cat dog person"]),
        model_writer=model, vocab_size=11, model_type="WORD", minloglevel=2, pad_id=0, bos_id=-1, eos_id=1,
        unk_id=2, pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>")
    tokenizer = keras_hub.models.SigLIPTokenizer(proto=model.getvalue())
    vision = keras_hub.models.SigLIPVisionEncoder(patch_size=8, hidden_dim=16, num_layers=1, num_heads=2,
                                                  intermediate_dim=32, image_shape=(image_size, image_size, 3))
    text = keras_hub.models.SigLIPTextEncoder(vocabulary_size=tokenizer.vocabulary_size(), embedding_dim=16,
                                              hidden_dim=16, num_layers=1, num_heads=2, intermediate_dim=32,
                                              max_sequence_length=SEQUENCE_LENGTH)
    backbone = keras_hub.models.SigLIPBackbone(vision_encoder=vision, text_encoder=text)
    converter = keras_hub.layers.SigLIPImageConverter(image_size=(image_size, image_size), scale=1.0 / 127.5,
                                                      offset=-1.0, interpolation="bicubic", antialias=True,
                                                      crop_to_aspect_ratio=False)
    preprocessor = keras_hub.models.SigLIPPreprocessor(tokenizer=tokenizer, image_converter=converter,
                                                       sequence_length=SEQUENCE_LENGTH)
    os.makedirs(directory, exist_ok=True)
    backbone.save_to_preset(directory)
    preprocessor.save_to_preset(directory)
    return directory


def save_vision_encoder_only(directory, image_size=IMAGE_SIZE):
    """A preset of a bare CLIPVisionEncoder: a KerasHub backbone that has no text half."""
    import keras_hub

    keras_hub.models.CLIPVisionEncoder(patch_size=8, hidden_dim=16, num_layers=1, num_heads=2, intermediate_dim=32,
                                       image_shape=(image_size, image_size, 3)).save_to_preset(directory)
    return directory
