namespace NetStack.Core.Wire
