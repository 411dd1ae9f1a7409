"""Dataset sources: where the records of each dataset come from.

Built in: Cityscapes (`cityscapes`), Pascal VOC 2012 (`voc`), ADE20K (`ade20k`) and the
synthetic street scenes (`synthetic`, generated on disk); a user's own images and masks are
described by a YAML file (`custom`). Each source turns files into records
(``file_name``, ``sem_seg_file_name``, ...) and names its classes in a `Metadata`; the catalog
(`atrous.data.catalog`) registers them by name.
"""
