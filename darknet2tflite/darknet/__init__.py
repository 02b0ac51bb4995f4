"""The Darknet side: the .cfg grammar, shape inference, the .weights reader, decode metadata, official weights."""
