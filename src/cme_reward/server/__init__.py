"""`cme-reward serve`: the HTTP reward server (`app`, Starlette + uvicorn from the `serve` extra), its micro-batcher
(`batcher`), request checks (`requests`) and the OpenRLHF wire format it shares with the adapters (`wire`)."""
