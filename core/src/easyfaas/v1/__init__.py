"""Generated gRPC and protobuf code (scripts/gen-proto); shared by controller and funclet."""
