"""TFRecord schema, preprocessing, input pipelines, the converter and the demo dataset."""
