"""Studies from a hospital's PACS over DICOMweb (QIDO-RS, WADO-RS, STOW-RS), and a local
Orthanc to try it against."""
