{"execute":"guest-exec","arguments":{"path":"/bin/sh","arg":["-c","printf \"[%s]\" \"$A-$B\" \"$0\" \"$1\"; env | wc -l","it's \\ \/ \u00e9 \ud83d\ude00","$(x)\n;"],"env":["A=1","B=two words"]}}
{"execute":"guest-exec-status","arguments":{"pid":}}
