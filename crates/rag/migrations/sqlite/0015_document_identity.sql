-- A document's identity moves from a hash of its text to its source within
-- its collection (docs/ingest.md, "Document identity"). The documents stored
-- before this step are listed here; when the store opens, those with a
-- source and a text-derived id (`doc-` + 16 hex digits) get the new id
-- (store::rekey_legacy_documents, through the change log so every node's
-- indexes follow), and the list is emptied. Documents without a source and
-- caller-given ids keep their id.
CREATE TABLE legacy_document_ids (id TEXT PRIMARY KEY NOT NULL);
INSERT INTO legacy_document_ids (id) SELECT id FROM documents WHERE source IS NOT NULL;
