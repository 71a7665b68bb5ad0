-- A POST in the binary tensor extension: BODY_FILE holds the JSON header and the raw
-- tensors after it; HEADER_LENGTH is the header's length.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/octet-stream"
wrk.headers["Inference-Header-Content-Length"] = os.getenv("HEADER_LENGTH")
local f = io.open(os.getenv("BODY_FILE"), "rb")
wrk.body = f:read("*a")
f:close()
