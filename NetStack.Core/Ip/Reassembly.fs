namespace NetStack.Core.Ip
