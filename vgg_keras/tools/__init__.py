"""The file tools: the converter, diagnose, the demo builder, the launcher, cluster discovery."""
